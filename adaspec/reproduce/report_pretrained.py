"""The pretrained regime (`adaspec reproduce --preset pretrained --protocol official --results-dir
results/pretrained`, issue 13 part 2) in the README: per task, the authors' protocol with both models
pretrained on the corpus first, beside the same protocol from the barely trained initial draft."""

from __future__ import annotations

import json
from pathlib import Path

from adaspec.reproduce.report import OFFICIAL, _fmt, _mean_std, _pm


def _diff(seeds: dict, a: str, b: str) -> str:
    if not seeds.get(a) or not seeds.get(b):
        return "n/a"
    return f"{100 * (_mean_std(seeds[a])[0] - _mean_std(seeds[b])[0]):+.1f}"


def pretrained_row(block: dict, task: str, scratch: dict | None) -> str:
    seeds, ce = block["alpha_greedy_seeds"], block["validation_ce"]
    params, quality = block.get("params") or {}, block.get("target_quality") or {}
    sizes = (f"{params['target'] / 1e6:.2f}M / {params['draft'] / 1e6:.2f}M" if params else "n/a")
    before = (f"{_pm(scratch['alpha_greedy_seeds']['distillspec'])} / {_pm(scratch['alpha_greedy_seeds']['adaspec'])}"
              if scratch else "n/a")
    return (f"| {task} | {sizes} | {_fmt(ce.get('target'), '.2f')} / {_fmt(ce.get('draft_init'), '.2f')} / "
            f"{_fmt(ce.get('distillspec'), '.2f')} | {quality.get('metric', 'n/a')} {_fmt(quality.get('value'))} | "
            f"{_pm(seeds.get('draft_init', []))} | {_pm(seeds['distillspec'])} | {_pm(seeds['adaspec'])} | "
            f"{_diff(seeds, 'adaspec', 'distillspec')} | {_pm(seeds.get('kd_big_batch', []))} | "
            f"{_pm(seeds.get('random_big_batch', []))} | {_diff(seeds, 'adaspec', 'kd_big_batch')} | {before} | "
            f"{len(block['seeds'])} | `{block['command']}` |")


def pretrained_table(results_dir: Path) -> list[str]:
    """The README's rows for results/pretrained/<task>; empty when none is committed."""
    rows = []
    for path in sorted((results_dir / "pretrained").glob("*/results.json")):
        block = json.loads(path.read_text()).get(OFFICIAL)
        if not block:
            continue
        main = results_dir / path.parent.name / "results.json"
        scratch = json.loads(main.read_text()).get(OFFICIAL) if main.exists() else None
        rows.append(pretrained_row(block, path.parent.name, scratch))
    if not rows:
        return []
    return ["", "Nearer the paper's regime (`--preset pretrained`): target and draft first pretrained on the corpus "
            "of every task's training text, the draft to its plateau, then the target fine-tuned 3 epochs on the "
            "task and the draft distilled from its pretrained weights; the authors' protocol at equal optimizer "
            "steps. Greedy α in %, mean ± std over seeds; response cross-entropy on the validation split:", "",
            "| task | target / draft params | CE target / initial draft / DistillSpec | target quality | "
            "initial draft α | DistillSpec α | AdaSPEC α | AdaSPEC − DistillSpec | KD at AdaSPEC's batch α | "
            "random 40% at AdaSPEC's batch α | AdaSPEC − KD at its batch | same protocol from the barely trained "
            "draft: DistillSpec / AdaSPEC α | seeds | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows]
