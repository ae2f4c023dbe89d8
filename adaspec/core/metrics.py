"""Speculative-decoding statistics: raw counters, and the one place rates are derived from them.

`SpecStats` only stores counts and wall times; α, τ, c, per-position acceptance, tokens/s and the
theoretical speed-up are properties computed from those counters, so stats merged over many prompts give
the pooled rates (sum of accepted / sum of drafted), never an average of per-prompt ratios.

Conventions (README):
- α = accepted / (accepted + rejected): the per-token acceptance of the draft tokens the target judged
  (each step rejects at most one; tokens drafted after it were never judged). The paper's α, the one
  Leviathan et al.'s formula and the analytic α use.
- α drafted = accepted / drafted (vLLM's rate; lower, and γ-dependent).
- τ = tokens emitted per target verification forward, the bonus/correction token included (vLLM,
  Spec-Bench); the prefill forward is counted separately.
- c = time of one draft forward / time of one target verification forward, as measured in the run.
- S = (1 − α^{γ+1}) / ((1 − α)(γc + 1)) (Leviathan et al., 2023).

Token trees (`record_tree_step`): a step drafts a tree and accepts one root-to-node path. `drafted` counts
nodes, `accepted` the accepted path's length, `draft_depth` the tree's depth and `draft_forwards` the
drafter's forwards (one per depth). The chain definitions carry over by depth: the target judges the
children of each accepted node, a step ends with a rejection when the deepest accepted node has children
(all rejected) and without one at a leaf, so α = accepted / (accepted + rejected) is the probability that
a judged depth yields an accepted child (for a chain, exactly the chain's α), and the expected path
length follows from α and the depth as for a chain. α drafted = accepted / drafted is the share of drafted
nodes that end on the accepted path (low for wide trees by design). Per position i, a step counts as
drafting position i when its tree reaches depth i+1, and as accepting it when its path does; `depth_nodes`
keeps the nodes drafted at each depth. S and the τ-implied speed-up use the mean depth and the draft
forwards per step in place of γ (identical for chains).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from adaspec.errors import AdaspecError


def expected_tokens_per_step(alpha: float, gamma: float) -> float:
    """Expected tokens per verification step, (1 − α^{γ+1}) / (1 − α): γ + 1 at α = 1, 1 at α = 0."""
    if not 0.0 <= alpha <= 1.0:
        raise AdaspecError(f"acceptance rate must be in [0, 1], got {alpha}")
    if gamma < 0:
        raise AdaspecError(f"gamma must be >= 0, got {gamma}")
    if alpha == 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def theoretical_speedup(alpha: float, gamma: float, c: float) -> float:
    """Leviathan et al.'s expected wall-time speed-up, (1 − α^{γ+1}) / ((1 − α)(γc + 1))."""
    if c < 0:
        raise AdaspecError(f"cost ratio c must be >= 0, got {c}")
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + 1.0)


def optimal_gamma(alpha: float, c: float, gamma_max: int) -> int:
    """The draft length in [1, gamma_max] with the largest theoretical speed-up (ties: the shorter)."""
    if gamma_max < 1:
        raise AdaspecError(f"gamma_max must be >= 1, got {gamma_max}")
    alpha = min(max(alpha, 0.0), 1.0)
    best, best_s = 1, -1.0
    for g in range(1, gamma_max + 1):
        s = theoretical_speedup(alpha, g, c)
        if s > best_s * (1.0 + 1e-12):
            best, best_s = g, s
    return best


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _bump(counts: list[int], index: int, by: int = 1) -> None:
    if index >= len(counts):
        counts.extend([0] * (index + 1 - len(counts)))
    counts[index] += by


@dataclass
class SpecStats:
    """Raw counters of one or more speculative (or target-only) generations."""

    gamma: int = 0  # configured γ (the upper bound γ_max when γ is adaptive); max over merged runs
    sequences: int = 0  # generate calls merged into these counters
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens the target accepted
    emitted: int = 0  # tokens emitted by verification steps (accepted + correction/bonus, after truncation)
    steps: int = 0  # verification steps (decode steps for target-only)
    rejections: int = 0  # steps that ended by rejecting a draft token
    target_forwards: int = 0  # target verification forwards (prefill not counted)
    draft_forwards: int = 0  # draft forwards (prefill not counted)
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    draft_time_s: float = 0.0
    target_time_s: float = 0.0
    verify_time_s: float = 0.0  # the acceptance rule and its host sync (after the target forward)
    accept_hist: list[int] = field(default_factory=list)  # [n] = steps that accepted exactly n draft tokens
    gamma_hist: list[int] = field(default_factory=list)  # [g] = steps that drafted exactly g tokens
    position_drafted: list[int] = field(default_factory=list)  # [i] = times a token was drafted at position i
    position_accepted: list[int] = field(default_factory=list)  # [i] = times the token at position i was accepted
    draft_depth: int = 0  # sum over steps of the deepest drafted position (a chain's γ, a tree's depth)
    tree_steps: int = 0  # steps that verified a token tree (record_tree_step)
    depth_nodes: list[int] = field(default_factory=list)  # [i] = tree nodes drafted at depth i + 1

    def record_step(self, drafted: int, accepted: int, emitted: int) -> None:
        """Count one verification step that drafted `drafted` tokens and accepted the first `accepted`."""
        self.steps += 1
        self.target_forwards += 1
        self.draft_forwards += drafted
        self.drafted += drafted
        self.draft_depth += drafted
        self.accepted += accepted
        self.emitted += emitted
        self.rejections += int(accepted < drafted)
        _bump(self.accept_hist, accepted)
        _bump(self.gamma_hist, drafted)
        for i in range(drafted):
            _bump(self.position_drafted, i)
        for i in range(accepted):
            _bump(self.position_accepted, i)

    def record_tree_step(
        self, depth_nodes: list[int], accepted: int, emitted: int, rejected: bool, draft_forwards: int
    ) -> None:
        """Count one tree step: depth_nodes[i] nodes at depth i+1, an accepted path of `accepted` nodes,
        `rejected` when its last node (or the root) had children, `draft_forwards` drafter forwards."""
        depth, drafted = len(depth_nodes), sum(depth_nodes)
        self.steps += 1
        self.tree_steps += 1
        self.target_forwards += 1
        self.draft_forwards += draft_forwards
        self.drafted += drafted
        self.draft_depth += depth
        self.accepted += accepted
        self.emitted += emitted
        self.rejections += int(rejected)
        _bump(self.accept_hist, accepted)
        _bump(self.gamma_hist, drafted)
        for i, count in enumerate(depth_nodes):
            _bump(self.position_drafted, i)
            _bump(self.depth_nodes, i, count)
        for i in range(accepted):
            _bump(self.position_accepted, i)

    @classmethod
    def from_vllm(
        cls, gamma: int, drafts: int, draft_tokens: int, accepted: int, accepted_per_position: list[int]
    ) -> SpecStats:
        """The counters vLLM keeps (`vllm:spec_decode_num_drafts`, `_num_draft_tokens`, `_num_accepted_tokens`,
        `_num_accepted_tokens_per_pos`) as adaspec's, so its rates come from the same properties: a vLLM draft
        is one verification step emitting its accepted tokens plus one, and a step rejects unless its last
        drafted position was accepted (vLLM's mean acceptance length is then τ, its acceptance rate α drafted)."""
        full = accepted_per_position[gamma - 1] if len(accepted_per_position) >= gamma else 0
        return cls(
            gamma=gamma,
            drafted=draft_tokens,
            accepted=accepted,
            emitted=accepted + drafts,
            steps=drafts,
            target_forwards=drafts,
            rejections=drafts - full,
            draft_depth=draft_tokens,
            position_drafted=[drafts] * gamma,
            position_accepted=list(accepted_per_position),
        )

    def merge(self, other: SpecStats) -> SpecStats:
        """Counters of both runs added up (a new object; neither input changes)."""
        merged: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "gamma":
                merged[f.name] = max(a, b)
            elif isinstance(a, list):
                merged[f.name] = _add_lists(a, b)
            else:
                merged[f.name] = a + b
        return SpecStats(**merged)

    def __add__(self, other: SpecStats) -> SpecStats:
        if not isinstance(other, SpecStats):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: Any) -> SpecStats:
        # lets sum(list_of_stats) start from 0
        if other == 0:
            return self.merge(SpecStats())
        return NotImplemented

    # ---- derived rates: the only place they are computed ----

    @property
    def alpha(self) -> float:
        """α = accepted / (accepted + rejected): the per-token acceptance probability of judged draft tokens,
        the α for which the expected tokens per step is (1 − α^{γ+1}) / (1 − α)."""
        return _ratio(self.accepted, self.accepted + self.rejections)

    @property
    def alpha_drafted(self) -> float:
        """α drafted = accepted / drafted (counts tokens drafted after a rejection as rejected)."""
        return _ratio(self.accepted, self.drafted)

    @property
    def tau(self) -> float:
        """τ = tokens emitted per target verification forward (bonus/correction token included)."""
        return _ratio(self.emitted, self.target_forwards)

    @property
    def mean_gamma(self) -> float:
        """Draft tokens (tree nodes) proposed per step (below γ when the last step is shortened or γ is adaptive)."""
        return _ratio(self.drafted, self.steps)

    @property
    def mean_depth(self) -> float:
        """Deepest drafted position per step (γ for chains, the depth for trees)."""
        return _ratio(self.draft_depth, self.steps)

    @property
    def mean_accepted(self) -> float:
        """Accepted draft tokens (the accepted path's length) per step."""
        return _ratio(self.accepted, self.steps)

    @property
    def draft_forwards_per_step(self) -> float:
        return _ratio(self.draft_forwards, self.steps)

    @property
    def position_acceptance(self) -> list[float]:
        """[i] = fraction of tokens drafted at position i that were accepted."""
        return [
            _ratio(a, d)
            for a, d in zip(self.position_accepted + [0] * len(self.position_drafted), self.position_drafted)
        ]

    @property
    def c(self) -> float:
        """Measured cost ratio: (draft time per draft forward) / (target time per verification forward)."""
        return _ratio(_ratio(self.draft_time_s, self.draft_forwards), _ratio(self.target_time_s, self.target_forwards))

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time, prefill included."""
        return _ratio(self.emitted, self.prefill_time_s + self.decode_time_s)

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second of decode time (prefill excluded)."""
        return _ratio(self.emitted, self.decode_time_s)

    @property
    def theoretical_speedup(self) -> float:
        """S from the per-token α (the α of Leviathan et al.'s formula), the mean draft depth and the
        measured c (nan when undefined); trees: expected tokens from α and the mean depth over
        (draft forwards per step · c + 1)."""
        alpha, depth, forwards, c = self.alpha, self.mean_depth, self.draft_forwards_per_step, self.c
        if any(math.isnan(x) for x in (alpha, depth, forwards, c)):
            return math.nan
        return expected_tokens_per_step(alpha, depth) / (forwards * c + 1.0)

    @property
    def speedup_from_tau(self) -> float:
        """τ / (γc + 1): the speed-up over one target forward per token implied by the measured τ and c,
        with no i.i.d. assumption on acceptances (verification assumed to cost one target forward)."""
        forwards, c = self.draft_forwards_per_step, self.c
        return _ratio(self.tau, forwards * c + 1.0) if not math.isnan(c) else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Raw counters and derived rates, JSON-ready (undefined rates become None)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float) and math.isnan(x):
                return None
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        out: dict[str, Any] = dataclasses.asdict(self)
        for name in (
            "alpha",
            "alpha_drafted",
            "tau",
            "mean_gamma",
            "mean_depth",
            "mean_accepted",
            "c",
            "tokens_per_s",
            "decode_tokens_per_s",
            "theoretical_speedup",
            "speedup_from_tau",
            "position_acceptance",
        ):
            out[name] = clean(getattr(self, name))
        return out

    def format(self) -> str:
        """A few human-readable lines for the CLI."""

        def f(x: float, spec: str = ".3f") -> str:
            return "n/a" if math.isnan(x) else format(x, spec)

        pos = " ".join(f(a, ".2f") for a in self.position_acceptance)
        return "\n".join(
            [
                f"tokens: {self.emitted} in {self.steps} steps, {self.target_forwards} target forwards, "
                f"{self.draft_forwards} draft forwards",
                f"alpha (accepted/(accepted+rejected)): {f(self.alpha)} ({self.accepted}/"
                f"{self.accepted + self.rejections}); alpha drafted (accepted/drafted): {f(self.alpha_drafted)} "
                f"({self.accepted}/{self.drafted})",
                f"tau (tokens/verification): {f(self.tau)}; "
                + (
                    f"tree nodes per step: {f(self.mean_gamma, '.2f')}, depth {f(self.mean_depth, '.2f')}, "
                    "accepted path "
                    f"{f(self.mean_accepted, '.2f')}"
                    if self.tree_steps
                    else f"mean gamma: {f(self.mean_gamma, '.2f')}"
                ),
                f"acceptance by draft {'depth' if self.tree_steps else 'position'}: {pos or 'n/a'}",
                f"c (draft/target forward time): {f(self.c)}; theoretical speed-up S: {f(self.theoretical_speedup)}",
                f"time: prefill {self.prefill_time_s:.3f}s, decode {self.decode_time_s:.3f}s "
                f"(draft {self.draft_time_s:.3f}s, target {self.target_time_s:.3f}s); "
                f"{f(self.tokens_per_s, '.1f')} tokens/s",
            ]
        )
