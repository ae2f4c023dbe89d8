"""One exception type for every user-facing problem, so the CLI can print it as one line."""


class AdaspecError(ValueError):
    """Bad input or state the user can fix: the message names the problem in one line."""
