"""Where speculative decoding starts to pay on this machine: predicted speed-up against target size.

A trained pair measures τ (tokens per verification, bonus included) of a drafter at γ. For a sweep of
target sizes (presets built from configs: a forward's cost does not depend on what its weights learned)
this measures, on the lean decode path, the median cost of a one-token target forward t1, of a
verification of γ+1 tokens tv, and of the draft's one-token forward d, and predicts

    S = τ · t1 / (γ · d + tv + o)

the tokens/s of speculative decoding over the target alone if τ stayed what the trained pair measured
(a larger target with the same draft may accept less: the prediction is an upper bound in that respect).
o is the loop's own work per step (sampling, verification, cache crops, Python), which does not grow with
the model: it is solved from the trained pair's measured speed-up (benchmarks/drafters.py) at that pair's
target preset, measured in the same sweep. `calibration` also gives the forwards-only formula (o = 0) at
the pair's own costs beside its measured speed-up, which says how much of a step that work is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adaspec.errors import AdaspecError
from adaspec.evaluation.forward_cost import measure_forward_cost


def predicted_speedup(tau: float, gamma: int, t1: float, tv: float, d: float, overhead: float = 0.0) -> float:
    """τ·t1 / (γ·d + tv + overhead): tokens per second of a speculative step over one target forward per
    token (all times in one unit)."""
    if min(tau, t1, tv) <= 0 or d < 0 or overhead < 0 or gamma < 1:
        raise AdaspecError(
            f"need tau, t1, tv > 0, d, overhead >= 0 and gamma >= 1, got {tau}, {t1}, {tv}, {d}, {overhead}, {gamma}"
        )
    return tau * t1 / (gamma * d + tv + overhead)


def step_overhead(tau: float, gamma: int, t1: float, tv: float, d: float, measured_speedup: float) -> float:
    """The per-step work o that makes `predicted_speedup` equal a measured speed-up (0 if it is negative)."""
    if measured_speedup <= 0:
        raise AdaspecError(f"measured speed-up must be > 0, got {measured_speedup}")
    return max(0.0, tau * t1 / measured_speedup - (gamma * d + tv))


def crossover_params(params: Sequence[int], speedups: Sequence[float]) -> float | None:
    """The target size at which the predicted speed-up first reaches 1, interpolated in log(size) between
    the two neighbouring sizes; None when no neighbouring pair crosses 1 (all below or all above)."""
    if len(params) != len(speedups):
        raise AdaspecError("params and speedups must have the same length")
    points = sorted(zip(params, speedups))
    for (p0, s0), (p1, s1) in zip(points, points[1:]):
        if s0 < 1.0 <= s1:
            f = (1.0 - s0) / (s1 - s0)
            return math.exp(math.log(p0) + f * (math.log(p1) - math.log(p0)))
    return None


def sweep(
    targets: Sequence[str],
    draft: str,
    tau: float,
    gamma: int,
    pair_target: str,
    measured_speedup: float,
    vocab: int = 2048,
    prefix: int = 128,
    repeats: int = 30,
    device: str = "cpu",
) -> dict:
    """Measured lean costs per target preset (ms) and the draft's; the per-step work solved at
    `pair_target` (one of `targets`, the trained pair's target preset) from its `measured_speedup`; the
    predicted S per target size with that work and with forwards only."""
    if pair_target not in targets:
        raise AdaspecError(f"the trained pair's target preset {pair_target!r} must be one of the swept targets")
    costs = measure_forward_cost(
        [*targets, draft], vocab=vocab, prefix=prefix, sizes=(1, gamma + 1), repeats=repeats, device=device
    )
    d = costs[draft]["ms"]["lean"]["1"]
    lean = {name: costs[name]["ms"]["lean"] for name in targets}
    o = step_overhead(tau, gamma, lean[pair_target]["1"], lean[pair_target][str(gamma + 1)], d, measured_speedup)
    rows = []
    for name in targets:
        t1, tv = lean[name]["1"], lean[name][str(gamma + 1)]
        rows.append(
            {
                "target": name,
                "params": costs[name]["params"],
                "t1_ms": t1,
                "verify_ms": tv,
                "verify_cost_vs_one": tv / t1,
                "c": d / t1,
                "forwards_only_speedup": predicted_speedup(tau, gamma, t1, tv, d),
                "predicted_speedup": predicted_speedup(tau, gamma, t1, tv, d, o),
            }
        )
    crossing = crossover_params([r["params"] for r in rows], [r["predicted_speedup"] for r in rows])
    return {
        "draft": draft,
        "draft_params": costs[draft]["params"],
        "draft_ms": d,
        "tau": tau,
        "gamma": gamma,
        "pair_target": pair_target,
        "measured_speedup": measured_speedup,
        "step_overhead_ms": o,
        "rows": rows,
        "crossover_params": crossing,
    }


def calibration(measured: dict, method: str, prompts: str = "gsm8k:test", temperature: float = 0.0) -> dict:
    """The formula at a trained pair's own costs beside its measured speed-up, from a drafters benchmark
    JSON (`measured`): its τ, its c (a draft forward over a verification forward, as SpecStats measures it)
    and the verification cost v of γ+1 tokens relative to one give S = τ / (v · (γc + 1))."""
    row = next(
        (
            r
            for r in measured["rows"]
            if r["method"] == method and r["prompts"] == prompts and r["temperature"] == temperature
        ),
        None,
    )
    if row is None or row.get("tau") is None:
        raise AdaspecError(
            f"no {method} row for {prompts} at T={temperature} in the drafters benchmark of pair "
            f"{measured.get('pair')!r}"
        )
    gamma, v = measured["gamma"], measured["verify_cost_ratio"]
    model = predicted_speedup(row["tau"], gamma, 1.0, v, row["c"] * v)
    return {
        "pair": measured["pair"],
        "target_params": measured["target_params"],
        "method": method,
        "tau": row["tau"],
        "c": row["c"],
        "verify_cost_vs_one": v,
        "formula_speedup": model,
        "measured_speedup": row["vs_target"],
        "measured_over_formula": row["vs_target"] / model,
    }


def format_sweep(result: dict) -> str:
    lines = [
        f"draft {result['draft']} ({result['draft_params'] / 1e6:.2f}M, {result['draft_ms']:.3f} ms), "
        f"τ {result['tau']:.2f} at γ {result['gamma']}; per-step work {result['step_overhead_ms']:.3f} ms "
        f"(solved at {result['pair_target']}, measured {result['measured_speedup']:.2f}×)",
        "",
        "| target | params | t1 (ms) | verify γ+1 (ms) | verify / one | c = d / t1 | forwards only | predicted S |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['target']} | {r['params'] / 1e6:.1f}M | {r['t1_ms']:.3f} | {r['verify_ms']:.3f} | "
            f"{r['verify_cost_vs_one']:.2f} | {r['c']:.3f} | {r['forwards_only_speedup']:.2f}× | "
            f"{r['predicted_speedup']:.2f}× |"
        )
    crossing = result["crossover_params"]
    lines.append("")
    if crossing:
        where = f"{crossing / 1e6:.1f}M parameters"
    elif all(r["predicted_speedup"] >= 1 for r in result["rows"]):
        where = "at or below the smallest target swept (every size is predicted to pay)"
    else:
        where = "none in the sweep (no size where the prediction rises through 1×)"
    lines.append("crossover: " + where)
    return "\n".join(lines)
