"""One exception type for every user-facing problem, so the CLI can print it as one line."""


class AdaspecError(ValueError):
    """Bad input or state the user can fix: the message names the problem in one line."""


class NotServable(AdaspecError):
    """A drafter vLLM cannot load: the message says why."""


def warn(message: str) -> None:
    """A one-line notice on stderr: the command goes on, but the user should know."""
    import sys

    print(f"adaspec: warning: {message}", file=sys.stderr, flush=True)
