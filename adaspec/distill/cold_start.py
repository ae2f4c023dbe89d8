"""`--cold-start`: what AdaSPEC does when the draft (distill) or head (train-head) starts untrained (no
--draft-init).

AdaSPEC trains on the top-k fraction of response tokens by Δ = L(draft) − L(reference). The paper starts
from a pretrained draft that already predicts most tokens; a draft that starts untrained is never trained
on the other 1 − k of tokens and never learns them (issue 30: greedy α 0.000 where KD from the same start
reached 0.33; its greedy draft wrote a newline at every position). The remedies:

  ref     start from the reference's weights (a KD-trained model of the same family), as the paper's
          draft starts from a trained one; the draft then takes the reference's architecture
  warmup  every response token (k = 1) for the first selection.WARMUP_FRACTION of the optimizer steps, then k
  linear  k from 1 at the first optimizer step down to k at the last (the linear k schedule)
  off     the top-k from the first step, the behaviour before this option existed

The default is the remedy benchmarks/adaspec_cold_start.py measured best, against KD from the same fresh draft
at equal optimizer steps on two chat data sets; the fallback the next best (docs/cold_start.md, the numbers in
results/own_data/cold_start.json).
"""

from __future__ import annotations

from typing import Literal, get_args

from adaspec.distill.settings import WARMUP_FRACTION
from adaspec.errors import AdaspecError, warn

ColdStart = Literal["ref", "warmup", "linear", "off"]
CHOICES: tuple[str, ...] = get_args(ColdStart)
DEFAULT = "ref"
# `ref` needs a reference model directory; a distill run whose reference is only a teacher cache's L_ref
# takes the remedy measured next best instead
FALLBACK = "linear"


def resolve(requested: str, applies: bool, has_ref: bool = True, ramped: bool = False) -> str:
    """The cold start a run uses, recorded in its options: "off" unless `applies` (AdaSPEC from an untrained
    start); `ref` without a reference directory (`has_ref`) falls back to FALLBACK with a warning; a run whose
    k schedule already ramps from 1 (`ramped`: --k-schedule linear) is a `linear` cold start."""
    if requested not in CHOICES:
        raise AdaspecError(f"--cold-start must be one of {', '.join(CHOICES)}, got {requested!r}")
    if not applies:
        return "off"
    if requested == "ref" and not has_ref:
        warn(
            f"--cold-start ref starts from the reference model, and this run has only a teacher cache's "
            f"reference divergences (no --ref directory): cold start {FALLBACK} instead"
        )
        requested = FALLBACK
    if ramped and requested in ("warmup", "linear"):
        return "linear"
    return requested


def k_schedule(cold_start: str, schedule: str) -> str:
    """The run's k schedule (selection.scheduled_k): the cold start's ramp, else `schedule`."""
    return cold_start if cold_start in ("warmup", "linear") else schedule


def announcement(cold_start: str, what: str, k: float) -> str | None:
    """The line a run prints when a cold start applies (None for "off"); `what` is "draft" or "head"."""
    how = {
        "ref": "training starts from the reference's weights",
        "warmup": f"every response token for the first {WARMUP_FRACTION:.0%} of the steps, then the top {k:g}",
        "linear": f"the kept fraction falls linearly from every token to {k:g} over the steps",
    }.get(cold_start)
    if how is None:
        return None
    return (
        f"AdaSPEC from an untrained {what}: --cold-start {cold_start}, {how} (--cold-start off trains on the "
        f"top {k:g} from the first step, which an untrained {what} may never recover from)"
    )
