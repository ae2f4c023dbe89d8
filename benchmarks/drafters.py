"""One benchmark of every drafter, side by side (a thin wrapper over adaspec.evaluation.drafters).

    python benchmarks/drafters.py --target DIR --draft distillspec=DIR adaspec=DIR \
        [--tasks gsm8k cnn_dailymail mbpp] [--temperatures 0 1] [--pair small]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.evaluation.drafters import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
