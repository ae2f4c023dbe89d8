"""results/<task>/: results.json, report.md and plots from a reproduction's evaluations.

Every number here is read from the evaluation and training summaries the pipeline wrote; nothing is
typed in by hand. α in the tables is the empirical greedy acceptance from real speculative decoding,
over the tokens the target checked: accepted / (accepted + rejected), rejected = one per step that
ended on a rejection (the paper's α). α_drafted = accepted / drafted is also given; it depends on γ.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from adaspec.io import atomic_write_json, atomic_write_text

MAIN = ("distillspec", "adaspec")
OFFICIAL = "official_protocol"  # results.json's block of the authors' protocol (report_official.py)


def current_names(entry: dict) -> dict:
    """A draft's evaluation or speed entry with today's names. Files written before the rename used
    "alpha" for accepted/drafted and "alpha_tested" / "alpha_geometric" for the per-token α; committed
    results and resumable runs still hold such files, so they are translated here, in one place."""
    old = next((k for k in ("alpha_tested", "alpha_geometric") if k in entry), None)
    if old is None:
        return entry
    out = {k: v for k, v in entry.items() if k != old}
    out["alpha"], out["alpha_drafted"] = entry[old], entry.get("alpha")
    return out


def agreement(record: dict) -> float:
    """The validation metric of a training history record or summary (top-1 agreement with the target's
    greedy continuations; "alpha_greedy" in files written before it had its own name)."""
    for key in ("greedy_agreement", "best_greedy_agreement", "alpha_greedy", "best_alpha_greedy"):
        if key in record:
            return float(record[key])
    raise KeyError("greedy_agreement")


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(xs)
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if len(xs) > 1 else "")


def _per_seed(evals: dict[int, dict], name: str, *path: str) -> list[float]:
    out = []
    for seed in sorted(evals):
        node: Any = evals[seed]["drafts"].get(name)
        if node is None:
            continue
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            out.append(float(node))
    return out


def collect(
    command: str,
    task: str,
    preset_name: str,
    preset: Any,
    evals: dict[int, dict],
    summaries: dict[str, dict],
    speed: dict | None,
    heads: dict[str, dict] | None = None,
) -> dict:
    """`heads`: the names among the evaluated drafts that are drafter heads, with what they are (kind, label,
    the KD head an AdaSPEC head selected against); they get every measurement but a response loss."""
    evals = {seed: {**e, "drafts": {n: current_names(d) for n, d in e["drafts"].items()}} for seed, e in evals.items()}
    seeds = sorted(evals)
    first = evals[seeds[0]]
    names = [n for n in first["drafts"]]
    heads = heads or {}
    res: dict[str, Any] = {
        "task": task,
        "command": command,
        "preset": preset_name,
        "preset_settings": dict(preset.__dict__),
        "seeds": seeds,
        "params": {"target": first["target"]["params"], "draft": first["drafts"]["distillspec"]["params"]},
        "val_loss": {
            "target": first["target"]["response_loss"],
            **{n: mean_std(_per_seed(evals, n, "response_loss"))[0] for n in names if n not in heads},
        },
        "target_quality": {"metric": first["target"]["quality_metric"], "value": first["target"]["quality"]},
    }
    for key, path in (
        ("alpha_greedy", ("alpha",)),
        ("alpha_drafted", ("alpha_drafted",)),
        ("alpha_analytic_greedy", ("analytic", "alpha_greedy")),
        ("alpha_analytic_sampling", ("analytic", "alpha_sampling")),
        ("tau", ("tau",)),
        ("c", ("c",)),
        ("measured_speedup", ("measured_speedup",)),
        ("theoretical_speedup", ("theoretical_speedup",)),
    ):
        per = {n: _per_seed(evals, n, *path) for n in names}
        res[key] = {n: mean_std(v)[0] for n, v in per.items()}
        res[key + "_seeds"] = per
        res[key + "_std"] = {n: mean_std(v)[1] for n, v in per.items()}
    res["position_acceptance"] = {n: first["drafts"][n]["position_acceptance"] for n in names}
    res["training"] = {
        n: {str(s): v.get("history", []) for s, v in by_seed.items()} for n, by_seed in summaries.items()
    }
    res["ablations"] = {
        n: {"alpha_greedy": res["alpha_greedy"][n], "alpha_analytic_greedy": res["alpha_analytic_greedy"][n]}
        for n in names
        if n.startswith(("adaspec_", "distillspec_"))
    }
    if heads:
        res["heads"] = {n: {**spec, "params": first["drafts"][n]["params"]} for n, spec in heads.items()}
    if speed:
        res["speed"] = speed
    return res


def _plots(res: dict, outdir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in MAIN:
        for seed, hist in res["training"].get(name, {}).items():
            if hist:
                ax.plot(
                    [h["step"] for h in hist], [agreement(h) for h in hist], marker="o", label=f"{name} seed {seed}"
                )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation greedy α (top-1 agreement)")
    ax.set_title(f"{res['task']}: training curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "training_curves.png", dpi=110)
    files.append("training_curves.png")
    plt.close(fig)

    names = list(res["alpha_greedy"])
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 4))
    ax.bar(
        range(len(names)),
        [res["alpha_greedy"][n] for n in names],
        yerr=[res["alpha_greedy_std"][n] for n in names],
        capsize=4,
    )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("empirical greedy α")
    ax.set_title(f"{res['task']}: acceptance per draft")
    fig.tight_layout()
    fig.savefig(outdir / "alpha.png", dpi=110)
    files.append("alpha.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        pa = res["position_acceptance"].get(n) or []
        ax.plot(range(1, len(pa) + 1), pa, marker="o", label=n)
    ax.set_xlabel("draft position")
    ax.set_ylabel("P(accepted | drafted)")
    ax.set_title(f"{res['task']}: per-position acceptance (seed {res['seeds'][0]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "position_acceptance.png", dpi=110)
    files.append("position_acceptance.png")
    plt.close(fig)
    return files


def fmt(x: Any, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# A report template: long because report.md is long; each section is a few lines of formatting.
def render(res: dict, plots: list[str]) -> str:
    seeds, ps = res["alpha_greedy_seeds"], res.get("preset_settings", {})
    lines = [
        f"# AdaSPEC reproduction at CPU scale: {res['task']}",
        "",
        "Produced by:",
        "",
        "```",
        res["command"],
        "```",
        "",
        f"Preset `{res['preset']}`: target {res['params']['target']:,} parameters, draft "
        f"{res['params']['draft']:,} ({res['params']['target'] / res['params']['draft']:.1f}×), "
        f"seeds {res['seeds']}. Target quality on the test prompts: "
        f"{res['target_quality']['metric']} = {fmt(res['target_quality']['value'])}.",
        "",
        f"Epochs on this task's training split: target {ps.get('target_epochs', 0):.3g}, initial draft "
        f"{ps.get('draft_init_epochs', 0):.3g}, DistillSpec {ps.get('distill_epochs', 0):.3g} (AdaSPEC: that / k). "
        "A task with fewer training examples than the preset's minimum gets proportionally more epochs.",
        "",
        "## Acceptance (greedy speculative decoding on the test split)",
        "",
        "| draft | α (%) | α drafted (%) | analytic greedy α (%) | analytic sampling α (%) | τ | "
        "response CE, test | response CE, validation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    val = res.get("validation_ce") or {}
    for n in res["alpha_greedy"]:
        lines.append(
            f"| {n} | {pm(seeds[n])} | {pm(res['alpha_drafted_seeds'][n])} | "
            f"{pm(res['alpha_analytic_greedy_seeds'][n])} | {pm(res['alpha_analytic_sampling_seeds'][n])} "
            f"| {fmt(res['tau'][n], '.2f')} | {fmt(res['val_loss'].get(n))} | {fmt(val.get(n))} |"
        )
    lines += [
        "",
        _capacity_gap(res),
        "",
        "α = accepted / (accepted + rejected) over the tokens the target checked; α drafted = "
        "accepted / drafted (γ-dependent); analytic α from parallel forwards on the target's greedy "
        "continuations (top-1 agreement and Σ min(p, q)); mean ± std over seeds.",
        "",
    ]
    d, a = res["alpha_greedy"].get("distillspec"), res["alpha_greedy"].get("adaspec")
    if d is not None and a is not None and not math.isnan(d) and not math.isnan(a):
        lines += [f"AdaSPEC − DistillSpec: {100 * (a - d):+.1f} points of greedy α.", ""]
    lines += [
        "## Speed (measured on this machine, greedy)",
        "",
        "| draft | c | measured speed-up | theoretical S |",
        "|---|---|---|---|",
    ]
    for n in res["alpha_greedy"]:
        lines.append(
            f"| {n} | {fmt(res['c'][n])} | {fmt(res['measured_speedup'][n], '.2f')}× | "
            f"{fmt(res['theoretical_speedup'][n], '.2f')}× |"
        )
    if res.get("speed"):
        cfg = next(iter(res["speed"].values()))["config"]
        lines += [
            "",
            "`benchmarks/decode.py` on the first seed's drafts, run by the command above as "
            f"`python benchmarks/decode.py --target <target> --draft <draft> --prompts-task {res['task']} "
            f"--n-prompts {cfg['n_prompts']} --max-new-tokens {cfg['max_new_tokens']} --gamma {cfg['gamma']} "
            f"--repeats {cfg['repeats']}` (greedy, same prompts, medians over repeats, "
            f"{cfg['threads']} thread(s)):",
            "",
            "| draft | method | tokens/s | vs target alone | α drafted | α | τ | c | S | measured / S | "
            "outputs ≠ target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for draft, bench in res["speed"].items():
            for method, e in bench["methods"].items():
                e = current_names(e)
                lines.append(
                    f"| {draft} | {method} | {e['tokens_per_s']:.1f} | {e['speedup_vs_target_only']:.2f}× | "
                    f"{fmt(e.get('alpha_drafted'))} | {fmt(e.get('alpha'))} | {fmt(e.get('tau'), '.2f')} | "
                    f"{fmt(e.get('c'))} | {fmt(e.get('theoretical_speedup'), '.2f')} | "
                    f"{fmt(e.get('measured_over_S'), '.2f')} | {len(e['mismatched_prompts'])} |"
                )
            sd = bench["methods"].get("sd", {})
            if sd.get("speedup_vs_hf_assisted") is not None:
                lines.append(f"| {draft} | sd / hf_assisted | {sd['speedup_vs_hf_assisted']:.2f}× | | | | | | | | |")
    if res.get("heads"):
        from adaspec.recipes.reproduce.report_heads import render_heads

        lines += render_heads(res)
    if res["ablations"]:
        lines += [
            "",
            "## Ablations (first seed)",
            "",
            "The validation α is the training-time metric: top-1 agreement with the target on its greedy "
            "continuations of validation prompts (the training distribution), best over the run; the other "
            "columns are measured on the test prompts.",
            "",
            "| run | optimizer steps | α (%) | analytic greedy α (%) | best validation α (%) |",
            "|---|---|---|---|---|",
        ]
        for n in ("distillspec", "adaspec", *res["ablations"]):  # the first seed's value for every run
            hist = res["training"].get(n, {}).get(str(res["seeds"][0]), [])
            best = 100 * max(agreement(h) for h in hist) if hist else None
            lines.append(
                f"| {n} | {hist[-1]['step'] if hist else 'n/a'} | "
                f"{fmt(100 * res['alpha_greedy_seeds'][n][0], '.1f')} | "
                f"{fmt(100 * res['alpha_analytic_greedy_seeds'][n][0], '.1f')} | {fmt(best, '.1f')} |"
            )
    for name, extra in res.get("extra_evaluations", {}).items():
        lines += [
            "",
            f"## Extra evaluation: {name}",
            "",
            "```",
            extra["command"],
            "```",
            "",
            "| draft | α (%) | α drafted (%) | analytic greedy α (%) | response CE | measured speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for d, e in extra["drafts"].items():
            e = current_names(e)
            lines.append(
                f"| {d} | {fmt(100 * e['alpha'], '.1f')} | {fmt(100 * e['alpha_drafted'], '.1f')} | "
                f"{fmt(100 * e['analytic']['alpha_greedy'], '.1f')} | {fmt(e['response_loss'])} | "
                f"{fmt(e['measured_speedup'], '.2f')}× |"
            )
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def gap_ce(res: dict) -> tuple[str, dict[str, float]]:
    """The response cross-entropies that show the capacity gap: the validation split's where recorded."""
    return ("validation", res["validation_ce"]) if res.get("validation_ce") else ("test", res["val_loss"])


def _capacity_gap(res: dict) -> str:
    """Whether the target's response cross-entropy is below every draft's, on the training distribution."""
    split, ce = gap_ce(res)
    worse = [n for n, v in ce.items() if n != "target" and not ce["target"] < v]
    verdict = "below every draft's: the capacity gap is real" if not worse else f"not below that of {', '.join(worse)}"
    return f"Target response cross-entropy on the {split} split: {fmt(ce['target'])}, {verdict}."


def write_results(
    command: str,
    task: str,
    preset_name: str,
    preset: Any,
    evals: dict[int, dict],
    summaries: dict[str, dict],
    speed: dict | None,
    outdir: Path,
    validation_ce: dict[str, list[float]] | None = None,
    heads: dict[str, dict] | None = None,
) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    res = collect(command, task, preset_name, preset, evals, summaries, speed, heads)
    if validation_ce is not None:
        # mean over seeds, as val_loss (which is measured on the test split's reference responses)
        res["validation_ce"] = {n: mean_std(v)[0] for n, v in validation_ce.items()}
    # `adaspec eval --json results/<task>/ablation_<name>.json ...` runs beside the pipeline
    keep = ("alpha", "alpha_drafted", "analytic", "response_loss", "measured_speedup", "theoretical_speedup", "tau")
    res["extra_evaluations"] = {}
    for path in sorted(outdir.glob("ablation_*.json")):
        extra = json.loads(path.read_text())
        res["extra_evaluations"][path.stem] = {
            "command": extra["command"],
            "drafts": {d: {k: current_names(e)[k] for k in keep} for d, e in extra["drafts"].items()},
        }
    previous = outdir / "results.json"
    if previous.exists():  # the other protocol's results, written by their own command, stay
        official = json.loads(previous.read_text()).get(OFFICIAL)
        if official is not None:
            res[OFFICIAL] = official
    plots = _plots(res, outdir)
    _write(res, plots, outdir)
    return res


def _write(res: dict, plots: list[str], outdir: Path) -> None:
    notes = outdir / "notes.md"
    body = render(res, plots) if "alpha_greedy" in res else f"# AdaSPEC reproduction at CPU scale: {res['task']}\n"
    if res.get(OFFICIAL):
        from adaspec.recipes.reproduce.report_official import render_official  # it imports this module

        body += render_official(res[OFFICIAL])
    if notes.exists():  # the investigation of a result is written by a person and kept across reruns
        body += "\n" + notes.read_text()
    atomic_write_text(outdir / "report.md", body)
    atomic_write_json(outdir / "results.json", res)
