"""Where a speculative step's time goes (a thin wrapper over adaspec.evaluation.step_profile).

    python benchmarks/step_profile.py --target DIR --draft adaspec=DIR [--head eagle=DIR] [--gamma 3]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.evaluation.step_profile import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
