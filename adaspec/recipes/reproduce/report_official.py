"""The authors' protocol in a reproduction's report: the equal-steps block of results.json, its table and plot,
and the acceptance-aligned variants against plain KD (adaspec reproduce --protocol official)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaspec.recipes.reproduce.report import OFFICIAL, _write, agreement, collect, fmt, mean_std, pm


def write_official(
    command: str,
    task: str,
    preset_name: str,
    preset: Any,
    evals: dict[int, dict],
    summaries: dict[str, dict],
    outdir: Path,
    validation_ce: dict[str, list[float]],
    settings: dict,
    heads: dict[str, dict] | None = None,
) -> dict:
    """Merge the official-protocol runs into results/<task>/results.json under "official_protocol" (every
    other key of the file is kept) and re-render report.md; returns the block."""
    outdir.mkdir(parents=True, exist_ok=True)
    full = collect(command, task, preset_name, preset, evals, summaries, None, heads)
    runs = [n for n in full["alpha_greedy"] if n != "draft_init"]
    first = str(full["seeds"][0])
    block: dict[str, Any] = {"command": command, "settings": settings, "seeds": full["seeds"]}
    for key in ("alpha_greedy", "alpha_drafted", "alpha_analytic_greedy"):
        for suffix in ("", "_seeds", "_std"):
            block[key + suffix] = full[key + suffix]
    block["validation_ce"] = {n: mean_std(v)[0] for n, v in validation_ce.items()}
    block["params"], block["target_quality"] = full["params"], full["target_quality"]
    shape = {n: summaries[n].get(int(first), next(iter(summaries[n].values()))) for n in runs}
    block["optimizer_steps"] = {n: s["steps"] for n, s in shape.items()}
    block["global_batch"] = {n: s.get("batch_size") for n, s in shape.items()}
    block["epochs"] = {n: s.get("epochs") for n, s in shape.items()}
    block["training"] = {n: full["training"][n] for n in runs}
    if any(n in VARIANT_LABELS for n in runs):
        block["variants_vs_kd"] = variant_verdicts(block)
    if full.get("heads"):
        block["heads"] = full["heads"]
    path = outdir / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {"task": task, "preset": preset_name}
    res[OFFICIAL] = block
    _official_plot(block, task, outdir)
    plots = sorted(p.name for p in outdir.glob("*.png"))
    _write(res, plots, outdir)
    return block


def _official_plot(block: dict, task: str, outdir: Path) -> None:
    """Validation α against optimizer steps, every official-protocol run (first seed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    seed = str(block["seeds"][0])
    for name, by_seed in block["training"].items():
        hist = by_seed.get(seed) or []
        if hist:
            ax.plot(
                [h["step"] for h in hist],
                [agreement(h) for h in hist],
                marker="o",
                label=OFFICIAL_LABELS.get(name, name),
                lw=2 if name in OFFICIAL_LABELS else 1,
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation greedy α (top-1 agreement)")
    ax.set_title(f"{task}: the authors' protocol, equal steps (seed {seed})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "official_training_curves.png", dpi=110)
    plt.close(fig)


OFFICIAL_LABELS = {
    "distillspec": "DistillSpec (KD, every token)",
    "adaspec": "AdaSPEC (top 40% by Δ)",
    "kd_big_batch": "KD at AdaSPEC's batch (every token)",
    "random_big_batch": "random 40% at AdaSPEC's batch",
}


def render_official(block: dict) -> str:
    s = block["settings"]
    lines = [
        "",
        "## The authors' protocol (equal optimizer steps)",
        "",
        "Produced by:",
        "",
        "```",
        block["command"],
        "```",
        "",
        f"As the authors' scripts: constant lr {s['lr']:g} (no warm-up), weight decay {s['weight_decay']:g}; "
        "AdaSPEC and its variants at k train at global batch / k for epochs / k, so at DistillSpec's "
        f"optimizer steps, with the Δ-quantile taken within each group of {s['selection_group']} sequences "
        "(their per-device micro-batch on 8 processes). Same target, initial draft and teacher cache as above. "
        "Greedy α on the test split, mean ± std over seeds (first seed only where one value).",
        "",
        "| run | global batch | epochs | optimizer steps | α (%) | α drafted (%) | analytic greedy α (%) | "
        "response CE, validation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {**OFFICIAL_LABELS, **{n: h["label"] for n, h in block.get("heads", {}).items()}}
    for n, values in block["alpha_greedy_seeds"].items():
        lines.append(
            f"| {labels.get(n, n)} | {fmt(block['global_batch'].get(n), 'd')} | "
            f"{fmt(block['epochs'].get(n), '.3g')} | {fmt(block['optimizer_steps'].get(n), 'd')} | "
            f"{pm(values)} | {pm(block['alpha_drafted_seeds'][n])} | "
            f"{pm(block['alpha_analytic_greedy_seeds'][n])} | {fmt(block['validation_ce'].get(n))} |"
        )
    a = block["alpha_greedy"]
    diffs = [
        f"AdaSPEC − {OFFICIAL_LABELS[n].split(' (')[0]}: {100 * (a['adaspec'] - a[n]):+.1f}"
        for n in ("distillspec", "kd_big_batch", "random_big_batch")
        if n in a and "adaspec" in a
    ]
    if diffs:
        lines += ["", "; ".join(diffs) + " points of greedy α (means over seeds)."]
    lines += render_variants(block)
    return "\n".join(lines) + "\n"


# the acceptance-aligned variants (`reproduce --variants`, docs/variants.md)
VARIANT_LABELS = {
    "lk": "LK: -log α, every token at AdaSPEC's batch",
    "lk_kl": "LK-KL: λ·KL + (1 - λ)·TVD, every token at AdaSPEC's batch",
    "adaspec_tvd": "AdaSPEC, Δ in TVD",
    "adaspec_soft": "AdaSPEC, soft selection by Δ's rank",
    "adaspec_ksched": "AdaSPEC, k from 1 down to 0.4",
}
OFFICIAL_LABELS.update(VARIANT_LABELS)
# the goal: beat plain KD at equal optimizer steps by this much greedy α, beyond the seed spread
VARIANT_MARGIN = 0.01


def variant_verdicts(block: dict) -> dict[str, dict]:
    """Each variant's greedy α against plain KD at equal steps: the better (by mean) of DistillSpec and KD at
    AdaSPEC's batch. `beats` when the mean gain is at least VARIANT_MARGIN and larger than the seed spread,
    the sum of the two runs' standard deviations over seeds."""
    seeds = block["alpha_greedy_seeds"]
    kds = [n for n in ("distillspec", "kd_big_batch") if seeds.get(n)]
    if not kds:
        return {}
    kd = max(kds, key=lambda n: mean_std(seeds[n])[0])
    kd_mean, kd_std = mean_std(seeds[kd])
    out = {}
    for name in VARIANT_LABELS:
        if not seeds.get(name):
            continue
        mean, std = mean_std(seeds[name])
        gain, spread = mean - kd_mean, std + kd_std
        out[name] = {
            "kd": kd,
            "gain": gain,
            "spread": spread,
            "seeds": len(seeds[name]),
            "beats": bool(gain >= VARIANT_MARGIN and gain > spread),
        }
    return out


def render_variants(block: dict) -> list[str]:
    """The report's lines on the variants (none when the block has none)."""
    verdicts = block.get("variants_vs_kd") or {}
    if not verdicts:
        return []
    kd = OFFICIAL_LABELS[next(iter(verdicts.values()))["kd"]].split(" (")[0]
    lines = [
        "",
        f"Acceptance-aligned variants against plain KD at equal steps ({kd}, the better KD run): gain in "
        f"points of greedy α, seed spread = sum of the two standard deviations; beats = gain ≥ "
        f"{100 * VARIANT_MARGIN:g} and > spread.",
        "",
        "| variant | gain | spread | beats KD |",
        "|---|---|---|---|",
    ]
    for name, v in verdicts.items():
        lines.append(
            f"| {VARIANT_LABELS[name]} | {100 * v['gain']:+.1f} | {100 * v['spread']:.1f} | "
            f"{'yes' if v['beats'] else 'no'} |"
        )
    return lines
