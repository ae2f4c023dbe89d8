"""Data sets "of one's own" for the own-data benchmarks: the shipped tasks rewritten as chat records.

Neither is one of the paper's tasks as shipped (prompt/response text in the paper's formats); both are made
deterministically from the task files under data/, as folders of train/validation/test.jsonl that `--data`
reads (a split per file):

  gsm8k_chat        GSM8K as OpenAI `messages`: a system turn (a tutor persona), the question as the user
                    turn, the worked answer (its "#### N" line as "The answer is N.") as the assistant turn.
                    Splits as the built-in task: train = train.jsonl less its last 300, validation = those
                    300, test = test.jsonl.
  alpaca_multiturn  Alpaca as two-turn ShareGPT `conversations` (human, gpt, human, gpt; no system turn):
                    consecutive records of a split paired, the instruction (and its input) as each human
                    turn. Splits as the built-in task (test: the records marked sft-demo_random_test,
                    validation: every 30th of the rest), paired within each split.

    python benchmarks/own_datasets.py gsm8k_chat /tmp/gsm8k_chat [--limit N]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SPLITS = ("train", "validation", "test")
GSM8K_VALIDATION = 300  # as adaspec.data: the last 300 training records are the validation split
ALPACA_VALIDATION_STRIDE = 30
TUTOR = "You are a patient math tutor. Show your working."


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _gsm8k_answer(answer: str) -> str:
    work, _, final = answer.rpartition("####")
    return f"{work.rstrip()}\nThe answer is {final.strip()}." if work else answer


def gsm8k_chat() -> dict[str, list[dict]]:
    def chat(rec: dict) -> dict:
        return {
            "messages": [
                {"role": "system", "content": TUTOR},
                {"role": "user", "content": rec["question"]},
                {"role": "assistant", "content": _gsm8k_answer(rec["answer"])},
            ]
        }

    train = [chat(r) for r in _read(DATA / "gsm8k" / "train.jsonl")]
    return {
        "train": train[:-GSM8K_VALIDATION],
        "validation": train[-GSM8K_VALIDATION:],
        "test": [chat(r) for r in _read(DATA / "gsm8k" / "test.jsonl")],
    }


def _alpaca_turns(rec: dict) -> list[dict]:
    ask = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"].strip() else "")
    return [{"from": "human", "value": ask}, {"from": "gpt", "value": rec["output"]}]


def alpaca_multiturn() -> dict[str, list[dict]]:
    rows = _read(DATA / "alpaca" / "alpaca.jsonl")
    test = [r for r in rows if "sft-demo_random_test" in r.get("sources", [])]
    rest = [r for r in rows if "sft-demo_random_test" not in r.get("sources", [])]
    split = {
        "train": [r for i, r in enumerate(rest) if i % ALPACA_VALIDATION_STRIDE],
        "validation": [r for i, r in enumerate(rest) if i % ALPACA_VALIDATION_STRIDE == 0],
        "test": test,
    }
    # an odd record out at a split's end is dropped: every conversation has exactly two exchanges
    return {
        name: [{"conversations": _alpaca_turns(a) + _alpaca_turns(b)} for a, b in zip(recs[::2], recs[1::2])]
        for name, recs in split.items()
    }


DATASETS: dict[str, Callable[[], dict[str, list[dict]]]] = {
    "gsm8k_chat": gsm8k_chat,
    "alpaca_multiturn": alpaca_multiturn,
}


def write_dataset(name: str, path: Path, limit: int | None = None) -> Path:
    """Write data set `name` as `path`/{train,validation,test}.jsonl (at most `limit` training records; the
    held-out splits whole) and return `path`, the folder `--data` takes. Rewriting gives the same bytes."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for split, records in DATASETS[name]().items():
        if split == "train" and limit is not None:
            records = records[:limit]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (path / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=list(DATASETS))
    parser.add_argument("path", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="at most N training records")
    args = parser.parse_args()
    out = write_dataset(args.name, args.path, args.limit)
    print(" ".join(f"{s}: {sum(1 for _ in open(out / f'{s}.jsonl'))}" for s in SPLITS), "->", out)


if __name__ == "__main__":
    main()
