"""Per-token divergences between the target's and the draft's next-token distributions.

Every function here is a pure function of logits that returns one float32 value per token (shape
`logits.shape[:-1]`; float64 for float64 draft logits); masking, selection and reduction live in
`selection.py`. Convention: the first argument is the target (teacher) p, the second the draft (student) q;
both logits are divided by the temperature before the softmax.

- `fkl`: forward KL(p || q) = sum p log(p/q)   (DistillSpec / AdaSPEC default)
- `rkl`: reverse KL(q || p) = sum q log(q/p)
- `tvd`: total variation 0.5 * sum |p - q|    (1 - TVD is the speculative acceptance probability)
- `jsd`: generalised JSD of GKD (Agarwal et al. 2024) exactly as TRL's `GKDTrainer.generalized_jsd_loss`:
  with the mixture m = beta * p + (1 - beta) * q,
  JSD_beta = beta * KL(p || m) + (1 - beta) * KL(q || m).
  Like TRL, beta = 0 is special-cased to forward KL(p || q) and beta = 1 to reverse KL(q || p). (The
  formula itself tends to 0 at both ends, so the function is discontinuous there, on purpose: beta
  picks a direction, 0.5 is the symmetric JSD bounded by log 2.)

Acceptance-aligned losses (LK losses, Samarin et al. 2026, arXiv 2602.23881), with alpha = sum min(p, q),
the probability that speculative sampling accepts the draft's token (alpha = 1 - TVD):
- `lk`: -log max(alpha, LK_EPS)   (the paper's negative log-acceptance LK^alpha; its gradient is TVD's
  divided by alpha, so it does not vanish while the draft is poor, as TVD's does)
- `lk_kl`: lam * KL(p || q) + (1 - lam) * TVD with lam = exp(-LK_ETA * alpha), alpha under stop-gradient
  (the hybrid LK^lambda: KL's gradient while acceptance is low, TVD's as it rises). The weight is per token,
  which keeps this a pure per-token function (vLLM speculators' `lk_hybrid` does the same; NVIDIA ModelOpt
  uses one weight per batch from the mean alpha).

Memory: logits of real vocabularies are huge ([tokens x 50k+]) and usually bf16. `per_token_divergence`
works on chunks of rows, casting one chunk at a time to fp32 (fp64 for fp64 draft logits, so the backward
can be checked by `torch.autograd.gradcheck`), and its backward is a custom autograd Function that
recomputes each chunk and writes the analytic gradient straight into a draft-dtype buffer, so only a few
fp32 buffers of [chunk x vocab] ever exist (~3 for the KL kinds), forward or backward, plus the gradient
itself in the draft's dtype. Rows whose upstream gradient is zero (tokens not selected by AdaSPEC,
padding) are skipped in the backward.

Gradients with respect to the draft logits z (q = softmax(z / T)), for L = D(p, q): with G = dL/dq,
dL/dz = q * (G - <q, G>) / T, and q * G is
  fkl: -p          rkl: q log(q/p)          tvd: 0.5 q sign(q - p)          jsd: (1 - beta) q log(q/m)
  lk: 0.5 q sign(q - p) / alpha (0 where alpha < LK_EPS, the floor's flat part)
  lk_kl: -lam p + (1 - lam) 0.5 q sign(q - p)
(`rkl`'s "+1" term cancels against <q, G>; tvd's and lk's use d alpha / dq_v = 1[q_v < p_v], which differs
from -0.5 sign(q_v - p_v) by a constant that cancels too). The target never receives a gradient.

Sparse (cached-teacher) versions compare (K+1)-bucket distributions: the target's top-K probabilities plus
a tail bucket holding the rest, against the draft's probabilities at the same K ids plus the draft's mass
elsewhere. With K = V they equal the exact divergences.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from adaspec.errors import AdaspecError

KINDS = ("fkl", "rkl", "tvd", "jsd", "lk", "lk_kl")

# Default chunk: this many fp32 elements per [rows x V] buffer (16 MiB; ~84 rows at a 50k vocabulary).
# A chunk whose few buffers fit in the last-level cache was fastest on CPU, and far smaller than a whole
# batch of logits (benchmarks/loss_memory.py, 4 x 512 tokens x 50k bf16, fwd + bwd on CPU: this default
# ran ~3x faster than 512-2048-row chunks or the naive version, at 1/7 of the naive peak memory). GPUs
# may prefer larger chunks: pass chunk_tokens.
CHUNK_ELEMENTS = 1 << 22

# Floor on the tail buckets of the sparse divergences: a cache whose top-K covers (numerically) all of
# the mass leaves a tail of rounding noise, and KL against an exact zero would be infinite.
TAIL_EPS = 1e-8

# `lk`: floor on the acceptance alpha inside the log (only disjoint supports come near it)
LK_EPS = 1e-6
# `lk_kl`: decay of the KL weight exp(-eta * alpha); 3 is the paper's setting (and vLLM speculators' default)
LK_ETA = 3.0


def _check(kind: str, beta: float, temperature: float, chunk_tokens: int | None) -> str:
    """Validate arguments and resolve jsd's beta endpoints to the KL they mean (TRL's convention)."""
    if kind not in KINDS:
        raise AdaspecError(f"unknown divergence {kind!r}; choose one of: {', '.join(KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise AdaspecError(f"jsd beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise AdaspecError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise AdaspecError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if kind == "jsd" and beta == 0.0:
        return "fkl"
    if kind == "jsd" and beta == 1.0:
        return "rkl"
    return kind


def _chunk_rows(chunk_tokens: int | None, vocab: int) -> int:
    return int(chunk_tokens) if chunk_tokens is not None else max(1, CHUNK_ELEMENTS // max(vocab, 1))


def _dtype(draft: Tensor) -> torch.dtype:
    """Compute dtype: fp32, or fp64 for fp64 draft logits (exact enough for gradcheck)."""
    return torch.float64 if draft.dtype == torch.float64 else torch.float32


def _logp(logits: Tensor, temperature: float, dtype: torch.dtype = torch.float32) -> Tensor:
    x = logits.to(dtype)
    if temperature != 1.0:
        x = x / temperature
    return F.log_softmax(x, dim=-1)


# The helpers below overwrite their log-probability arguments (every caller passes fresh chunk
# tensors it no longer needs): this keeps a chunk at ~3 fp32 [rows x V] buffers instead of ~5.


def _plogratio_(la: Tensor, lb: Tensor) -> Tensor:
    """Elementwise a * (log a - log b) written into `la`; 0 where a == 0 (also when log b is -inf)."""
    a = la.exp()
    return la.sub_(lb).mul_(a).masked_fill_(a == 0, 0.0)


def _mixture_logp(lp: Tensor, lq: Tensor, beta: float) -> Tensor:
    lm = lp + math.log(beta)
    return torch.logaddexp(lm, lq + math.log1p(-beta), out=lm)


def _acceptance(lp: Tensor, lq: Tensor) -> Tensor:
    """alpha = sum min(p, q) per row [n, 1], as exp(min(log p, log q)): one temporary buffer."""
    return torch.minimum(lp, lq).exp_().sum(-1, keepdim=True)


def _rows(kind: str, lp: Tensor, lq: Tensor, beta: float) -> Tensor:
    """Divergence per row from fp32 log-probabilities [n, V] (dense) or [n, K+1] (buckets). Overwrites
    lp and lq."""
    if kind == "lk":
        return _acceptance(lp, lq).squeeze(-1).clamp_(min=LK_EPS).log_().neg_().clamp_(min=0.0)
    if kind == "lk_kl":
        lam = _acceptance(lp, lq).squeeze(-1).mul_(-LK_ETA).exp_()
        tvd = lp.exp().sub_(lq.exp()).abs_().sum(-1).mul_(0.5)
        fkl = _plogratio_(lp, lq).sum(-1).clamp_(min=0.0)
        return fkl.mul_(lam).add_(tvd.mul_(1.0 - lam))
    if kind == "fkl":
        out = _plogratio_(lp, lq).sum(-1)
    elif kind == "rkl":
        out = _plogratio_(lq, lp).sum(-1)
    elif kind == "tvd":
        return lp.exp_().sub_(lq.exp_()).abs_().sum(-1).mul_(0.5)
    else:
        lm = _mixture_logp(lp, lq, beta)
        out = _plogratio_(lp, lm).sum(-1).mul_(beta).add_(_plogratio_(lq, lm).sum(-1), alpha=1.0 - beta)
    # exact math is >= 0; only rounding makes identical distributions come out at -1e-9
    return out.clamp_(min=0.0)


def _qgrad(kind: str, lp: Tensor, lq: Tensor, q: Tensor, beta: float) -> Tensor:
    """q * dL/dq elementwise (see the module docstring); 0 wherever q == 0. Overwrites lp and lq."""
    if kind == "fkl":
        return lp.exp_().neg_()
    if kind == "rkl":
        return _plogratio_(lq, lp)
    if kind == "tvd":
        return torch.sign(q - lp.exp_()).mul_(q).mul_(0.5)
    if kind in ("lk", "lk_kl"):
        alpha = _acceptance(lp, lq)
        p = lp.exp_()
        tvd = torch.sign(q - p).mul_(q).mul_(0.5)
        if kind == "lk":
            return tvd.div_(alpha.clamp(min=LK_EPS)).masked_fill_(alpha < LK_EPS, 0.0)
        lam = alpha.mul_(-LK_ETA).exp_()
        return tvd.mul_(1.0 - lam).sub_(p.mul_(lam))
    return _plogratio_(lq, _mixture_logp(lp, lq, beta)).mul_(1.0 - beta)


def _dense_grad(kind: str, lp: Tensor, lq: Tensor, beta: float, temperature: float) -> Tensor:
    """dL/dz for each row, in fp32. Overwrites lp and lq."""
    if kind == "fkl":
        return lq.exp_().sub_(lp.exp_()).div_(temperature)
    q = lq.exp()
    qg = _qgrad(kind, lp, lq, q, beta)
    s = qg.sum(-1, keepdim=True)
    return qg.sub_(q.mul_(s)).div_(temperature)


def _rows_of(x: Tensor, idx: Tensor) -> Tensor:
    """Rows `idx` of x viewed as [-1, x.shape[-1]], without copying all of x when x is a strided slice
    such as `logits[:, :-1]` (which cannot be viewed flat)."""
    try:
        return x.view(-1, x.shape[-1]).index_select(0, idx)
    except RuntimeError:
        return x[torch.unravel_index(idx, x.shape[:-1])]


def _row_chunks(n: int, chunk: int, device: torch.device):
    for start in range(0, n, chunk):
        yield torch.arange(start, min(start + chunk, n), device=device)


def _nonzero_row_chunks(grad_out: Tensor, chunk: int):
    rows = torch.nonzero(grad_out.reshape(-1), as_tuple=True)[0]
    for start in range(0, rows.numel(), chunk):
        yield rows[start : start + chunk]


class _DenseDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, target: Tensor, draft: Tensor, kind: str, beta: float, temperature: float, chunk: int) -> Tensor:
        n = target.numel() // target.shape[-1]
        dt = _dtype(draft)
        out = torch.empty(n, dtype=dt, device=draft.device)
        for idx in _row_chunks(n, chunk, draft.device):
            lp = _logp(_rows_of(target, idx), temperature, dt)
            lq = _logp(_rows_of(draft, idx), temperature, dt)
            out[idx] = _rows(kind, lp, lq, beta)
        ctx.save_for_backward(target, draft)
        ctx.args = (kind, beta, temperature, chunk)
        return out.view(draft.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        target, draft = ctx.saved_tensors
        kind, beta, temperature, chunk = ctx.args
        grad = torch.zeros_like(draft, memory_format=torch.contiguous_format)
        flat = grad.view(-1, draft.shape[-1])
        dt = _dtype(draft)
        g_out = grad_out.reshape(-1).to(dt)
        for idx in _nonzero_row_chunks(g_out, chunk):
            lp = _logp(_rows_of(target, idx), temperature, dt)
            lq = _logp(_rows_of(draft, idx), temperature, dt)
            g = _dense_grad(kind, lp, lq, beta, temperature).mul_(g_out[idx, None])
            flat.index_copy_(0, idx, g.to(draft.dtype))
        return None, grad, None, None, None, None


def per_token_divergence(
    kind: str,
    target_logits: Tensor,
    draft_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Divergence `kind` between target and draft next-token distributions at every position.

    Inputs [..., V] of any float dtype; returns float32 [...] (float64 for float64 draft logits), differentiable
    w.r.t. `draft_logits`
    only. Rows are processed `chunk_tokens` at a time (default: CHUNK_ELEMENTS // V), so only a few fp32
    [chunk x V] buffers exist at once, in the backward too.
    """
    kind = _check(kind, beta, temperature, chunk_tokens)
    if target_logits.shape != draft_logits.shape:
        raise AdaspecError(
            f"target and draft logits differ in shape: {tuple(target_logits.shape)} vs {tuple(draft_logits.shape)}"
        )
    if draft_logits.dim() == 0 or draft_logits.shape[-1] == 0:
        raise AdaspecError("logits need a non-empty vocabulary dimension")
    return _DenseDivergence.apply(
        target_logits.detach(),
        draft_logits,
        kind,
        float(beta),
        float(temperature),
        _chunk_rows(chunk_tokens, draft_logits.shape[-1]),
    )


def forward_kl(target_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p || q) per token, p = target, q = draft."""
    return per_token_divergence("fkl", target_logits, draft_logits, temperature)


def reverse_kl(target_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(q || p) per token, p = target, q = draft."""
    return per_token_divergence("rkl", target_logits, draft_logits, temperature)


def total_variation(target_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """0.5 * sum |p - q| per token."""
    return per_token_divergence("tvd", target_logits, draft_logits, temperature)


def jsd(target_logits: Tensor, draft_logits: Tensor, beta: float = 0.5, temperature: float = 1.0) -> Tensor:
    """Generalised JSD per token, TRL's convention: beta*KL(p||m) + (1-beta)*KL(q||m), m = beta*p +
    (1-beta)*q; beta = 0 gives KL(p||q), beta = 1 gives KL(q||p)."""
    return per_token_divergence("jsd", target_logits, draft_logits, temperature, beta=beta)


def lk(target_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """LK^alpha per token: -log max(alpha, LK_EPS), alpha = sum min(p, q) the acceptance probability."""
    return per_token_divergence("lk", target_logits, draft_logits, temperature)


def lk_kl(target_logits: Tensor, draft_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """LK^lambda per token: lam * KL(p||q) + (1 - lam) * TVD, lam = exp(-LK_ETA * alpha) without gradient."""
    return per_token_divergence("lk_kl", target_logits, draft_logits, temperature)


DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "tvd": total_variation,
    "jsd": jsd,
    "lk": lk,
    "lk_kl": lk_kl,
}


# ---- sparse (top-K + tail) versions for cached teachers ----


def topk_teacher(
    target_logits: Tensor, k: int, temperature: float = 1.0, chunk_tokens: int | None = None
) -> tuple[Tensor, Tensor]:
    """The target's top-k token ids (int64) and their log-probabilities (float32) at `temperature`, per
    position: what a teacher cache stores for `sparse_divergence`."""
    vocab = target_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise AdaspecError(f"top-k must be in [1, vocab size {vocab}], got {k}")
    _check("fkl", 0.5, temperature, chunk_tokens)
    lead = target_logits.shape[:-1]
    n = target_logits.numel() // vocab
    ids = torch.empty(n, k, dtype=torch.long, device=target_logits.device)
    logprobs = torch.empty(n, k, dtype=torch.float32, device=target_logits.device)
    with torch.no_grad():
        for idx in _row_chunks(n, _chunk_rows(chunk_tokens, vocab), target_logits.device):
            values, top = _logp(_rows_of(target_logits, idx), temperature).topk(k, dim=-1)
            ids[idx], logprobs[idx] = top, values
    return ids.view(*lead, k), logprobs.view(*lead, k)


def _buckets(ids: Tensor, lp_top: Tensor, lq: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(K+1)-bucket log-probabilities of target and draft, plus the draft's exact log tail and whether its
    tail is above the floor (so takes part in the gradient)."""
    lq_top = lq.gather(-1, ids)
    # the draft's tail from its own logits (not 1 - sum): exact even when the tail is tiny
    lq_tail = lq.scatter(-1, ids, float("-inf")).logsumexp(-1)
    p_tail = (-torch.expm1(lp_top.logsumexp(-1))).clamp(min=TAIL_EPS)
    q_live = lq_tail.exp() >= TAIL_EPS
    lq_tail_floored = lq_tail.clamp(min=math.log(TAIL_EPS))
    lp_hat = torch.cat([lp_top, p_tail.log().unsqueeze(-1)], dim=-1)
    lq_hat = torch.cat([lq_top, lq_tail_floored.unsqueeze(-1)], dim=-1)
    return lp_hat, lq_hat, lq_tail, q_live


def _sparse_grad(kind: str, ids: Tensor, lp_top: Tensor, lq: Tensor, beta: float, temperature: float) -> Tensor:
    """dL/dz for bucketed L: j in the top-K gets (qG_k - q_j S)/T, j in the tail (q_j/q_tail qG_tail -
    q_j S)/T, S = sum_b qG_b; the tail bucket drops out while the draft's tail is below the floor (where
    the clamp has zero derivative)."""
    lp_hat, lq_hat, lq_tail, q_live = _buckets(ids, lp_top, lq)
    q_hat = lq_hat.exp()
    qg = _qgrad(kind, lp_hat, lq_hat, q_hat, beta)
    qg[..., -1] = torch.where(q_live, qg[..., -1], 0.0)
    s = qg.sum(-1, keepdim=True)
    # tail entries: q_j / q_tail * qG_tail, with q_j / q_tail = exp(lq_j - lq_tail) (no 0/0)
    tail_ratio = torch.where(q_live.unsqueeze(-1), (lq - lq_tail.unsqueeze(-1)).exp_(), 0.0)
    q = lq.exp_()
    grad = tail_ratio.mul_(qg[..., -1:]).sub_(q * s)
    top = qg[..., :-1] - q_hat[..., :-1] * s
    return grad.scatter_(-1, ids, top).div_(temperature)


class _SparseDivergence(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, ids: Tensor, lp_top: Tensor, draft: Tensor, kind: str, beta: float, temperature: float, chunk: int
    ) -> Tensor:
        n = draft.numel() // draft.shape[-1]
        dt = _dtype(draft)
        out = torch.empty(n, dtype=dt, device=draft.device)
        flat_ids = ids.reshape(n, -1)
        flat_lp = lp_top.reshape(n, -1)
        for idx in _row_chunks(n, chunk, draft.device):
            lq = _logp(_rows_of(draft, idx), temperature, dt)
            lp_hat, lq_hat, _, _ = _buckets(flat_ids[idx], flat_lp[idx].to(dt), lq)
            out[idx] = _rows(kind, lp_hat, lq_hat, beta)
        ctx.save_for_backward(flat_ids, flat_lp, draft)
        ctx.args = (kind, beta, temperature, chunk)
        return out.view(draft.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        flat_ids, flat_lp, draft = ctx.saved_tensors
        kind, beta, temperature, chunk = ctx.args
        grad = torch.zeros_like(draft, memory_format=torch.contiguous_format)
        flat = grad.view(-1, draft.shape[-1])
        dt = _dtype(draft)
        g_out = grad_out.reshape(-1).to(dt)
        for idx in _nonzero_row_chunks(g_out, chunk):
            lq = _logp(_rows_of(draft, idx), temperature, dt)
            g = _sparse_grad(kind, flat_ids[idx], flat_lp[idx].to(dt), lq, beta, temperature)
            flat.index_copy_(0, idx, g.mul_(g_out[idx, None]).to(draft.dtype))
        return None, None, grad, None, None, None, None


def sparse_divergence(
    kind: str,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    draft_logits: Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Divergence `kind` between the target's cached top-K (+ tail) distribution and the draft's.

    `topk_ids` [..., K] int64 and `topk_logprobs` [..., K] are the target's top-K token ids and
    log-probabilities, already at the wanted temperature (as `topk_teacher` builds them); `draft_logits`
    [..., V] are divided by `temperature` here. The draft's distribution is collapsed onto the same K+1
    buckets: q at the K ids, and the draft's remaining mass. Tails are floored at TAIL_EPS. K = V gives
    the exact divergence. Returns float32 [...] (float64 for float64 draft logits), differentiable w.r.t.
    `draft_logits`.
    """
    kind = _check(kind, beta, temperature, chunk_tokens)
    lead, vocab = draft_logits.shape[:-1], draft_logits.shape[-1]
    if topk_ids.shape != topk_logprobs.shape or topk_ids.shape[:-1] != lead:
        raise AdaspecError(
            f"cached top-k ids {tuple(topk_ids.shape)} / log-probs "
            f"{tuple(topk_logprobs.shape)} do not match draft logits {tuple(draft_logits.shape)}"
        )
    if not 1 <= topk_ids.shape[-1] <= vocab:
        raise AdaspecError(f"cached top-k width {topk_ids.shape[-1]} must be in [1, vocab size {vocab}]")
    return _SparseDivergence.apply(
        topk_ids.detach().long(),
        topk_logprobs.detach(),
        draft_logits,
        kind,
        float(beta),
        float(temperature),
        _chunk_rows(chunk_tokens, vocab),
    )
