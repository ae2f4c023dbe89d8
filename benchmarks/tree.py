"""Token trees against chains for every drafter, greedy, side by side in one run (a thin wrapper over
adaspec.evaluation.trees).

    python benchmarks/tree.py --target DIR --draft adaspec=DIR --head eagle=DIR mtp=DIR medusa=DIR \
        [--n-prompts 5] [--max-new-tokens 96] [--chains 2 3 4 5 6] [--trees SPEC ...] [--repeats 3] [--pair demo]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.evaluation.trees import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
