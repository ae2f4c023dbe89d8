"""The drafter heads of a reproduction (`adaspec reproduce --heads`) in report.md and the README: rows beside
the DistillSpec and AdaSPEC drafts, from results.json's "heads" (files without it render as before)."""

from __future__ import annotations

from adaspec.recipes.reproduce.protocols import VARIANT_RUNS
from adaspec.recipes.reproduce.report import fmt, pm


def _head_steps(res: dict, name: str) -> str:
    hist = res["training"].get(name, {}).get(str(res["seeds"][0]), [])
    return str(hist[-1]["step"]) if hist else "n/a"


def render_heads(res: dict) -> list[str]:
    """The drafter heads beside the draft LMs: what each is, its acceptance per position, AdaSPEC − KD."""
    heads, ps, first = res["heads"], res.get("preset_settings", {}), res["seeds"][0]
    lines = [
        "",
        "## Drafter heads on the frozen target",
        "",
        "`adaspec train-head` on the frozen target (one for every seed; each seed its own head "
        f"initialisation and batches): {ps.get('head_epochs', 0):.3g} epochs for a KD head; "
        "an AdaSPEC head keeps k = 0.4 of the tokens per unroll step (MTP: per depth) by Δ against that "
        "seed's KD head of its kind, at the drafts' matched token budget. EAGLE heads unroll "
        f"{ps.get('head_ttt_steps', 'n/a')} training-time-test steps, MTP and Medusa have γ = "
        f"{ps.get('gamma', 'n/a')} depths. Measured in the same evaluation as the drafts; the analytic α "
        "is that of the head's first proposal, teacher-forced on the target's features. Optimizer steps "
        f"and per-position acceptance: seed {first}.",
        "",
        "| head | what | parameters | optimizer steps | α (%) | α drafted (%) | analytic greedy α (%) | "
        "analytic sampling α (%) | τ | acceptance per position | c | measured speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, spec in heads.items():
        pa = res["position_acceptance"].get(n) or []
        lines.append(
            f"| {n} | {spec['label']} | {spec['params']:,} | {_head_steps(res, n)} | "
            f"{pm(res['alpha_greedy_seeds'][n])} | {pm(res['alpha_drafted_seeds'][n])} | "
            f"{pm(res['alpha_analytic_greedy_seeds'][n])} | {pm(res['alpha_analytic_sampling_seeds'][n])} | "
            f"{fmt(res['tau'][n], '.2f')} | {' / '.join(fmt(x, '.2f') for x in pa) or 'n/a'} | "
            f"{fmt(res['c'][n])} | {fmt(res['measured_speedup'][n], '.2f')}× |"
        )
    a = res["alpha_greedy"]
    diffs = [
        f"{heads[n]['label'].split(',')[0]}: {100 * (a[n] - a[spec['ref']]):+.1f}"
        for n, spec in heads.items()
        if spec.get("ref") in a
    ]
    if diffs:
        lines += ["", "AdaSPEC − KD, greedy α points (means over seeds): " + "; ".join(diffs) + "."]
    three, one = VARIANT_RUNS
    if three in a and one in a:
        lines += [
            "",
            f"EAGLE-3 − EAGLE-1 (seed {first}): "
            f"{100 * (res['alpha_greedy_seeds'][three][0] - a[one]):+.1f} points of greedy α.",
        ]
    return lines
