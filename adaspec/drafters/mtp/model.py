"""Multi-token prediction modules in the DeepSeek-V3 layout, added to a frozen target, as a drafter.

Module k (k = 1..D) at position i combines the previous depth's hidden state h_i^{k-1} with the embedding
of the token at offset k, t_{i+k}:

    h_i^k = Block_k(eh_proj_k([enorm_k(Emb(t_{i+k})); hnorm_k(h_i^{k-1})]))     (eh_proj: 2H -> H)

and predicts t_{i+k+1} through the TARGET's own final norm and output head; Emb is the target's token
embedding (frozen, shared). The concatenation order [embedding; hidden] is the one of the released
checkpoints as vLLM's `deepseek_mtp.py` applies them (`torch.cat([inputs_embeds, previous_hidden_states])`);
the paper writes the two the other way round, which only matters for exported weights.

h_i^0 is the target's final normed hidden state (adaspec.models.target layer -1, what its head reads):
that is what vLLM hands its MTP drafter (`DeepseekV2Model.forward` returns `self.norm(hidden, residual)`
and the v1 model runner passes that output as `target_hidden_states`), and what Medusa reads; an export
served by vLLM therefore sees at inference the features it was trained on.

Block_k is one Llama-style decoder layer (RMSNorm, multi-head attention with rotary, SiLU-gated MLP) with
its own KV cache over the positions of depth k. Positions are those of h (i), as in vLLM's first MTP
step; a constant shift (the token's i + k) gives the same attention, since rotary scores are relative.

Decoding (DeepSeek's scheme, exact with respect to training): after a verification step the engine holds
seq[:n] and the target's features of positions 0..n-2. Every module runs at the last position P = n-2:
module 1 reads h_P^0 and t_{n-1} (the bonus/correction token) and proposes x_1 = t_n; module k reads
h_P^{k-1} and x_{k-1} and proposes x_k. So γ <= D. Module k's state at position i depends on t_{i+k}, so
only positions i <= n-1-k are final; the later ones (computed from proposals) are recomputed on the next
step, and each module's cache is cropped back to its final positions after every proposal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import per_depth_expand
from adaspec.core.tree_shape import TreeShape
from adaspec.drafters.block import BlockConfig, DecoderBlock, block_config
from adaspec.drafters.common import RMSNorm
from adaspec.drafters.lean_layer import LeanLayer, rms_norm, weight_versions
from adaspec.drafters.target_parts import TargetParts, target_parts
from adaspec.errors import AdaspecError
from adaspec.models.target import FINAL


@dataclass(frozen=True)
class MTPConfig:
    depth: int
    hidden: int
    heads: int
    intermediate: int
    eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def block(self) -> BlockConfig:
        return BlockConfig(self.hidden, self.heads, self.intermediate, self.eps, self.rope_theta)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_target(cls, target: PreTrainedModel, depth: int = 3) -> MTPConfig:
        if depth < 1:
            raise AdaspecError(f"MTP depth must be >= 1, got {depth}")
        b = block_config(target)
        return cls(depth, b.hidden, b.heads, b.intermediate, b.eps, b.rope_theta)


class MTPModule(nn.Module):
    """One prediction depth: the two input norms, the 2H -> H projection and one decoder block."""

    def __init__(self, cfg: MTPConfig):
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden, cfg.eps)
        self.hnorm = RMSNorm(cfg.hidden, cfg.eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden, cfg.hidden, bias=False)
        self.block = DecoderBlock(cfg.block)

    def forward(self, prev: Tensor, embedded: Tensor) -> Tensor:
        """prev = h^{k-1} and embedded = Emb(t_{i+k}) for positions 0..T-1, [B, T, H] each -> h^k."""
        x = self.eh_proj(torch.cat([self.enorm(embedded), self.hnorm(prev)], dim=-1))
        return self.block(x)


class LeanMTPModule:
    """MTPModule on the lean decode path (adaspec.drafters.lean_layer), with its block's KV cache."""

    def __init__(self, module: MTPModule, cfg: MTPConfig):
        self.module = module
        self.w_eh = module.eh_proj.weight.detach().t().contiguous()
        b = module.block
        self.layer = LeanLayer(
            b.self_attn, b.post_attention_layernorm, b.mlp, cfg.heads, cfg.heads, cfg.block.head_dim, cfg.rope_theta
        )

    def run(self, prev: Tensor, embedded: Tensor) -> Tensor:
        """MTPModule.forward for positions length..length+T-1 after the cached ones, [T, H] each."""
        m = self.module
        x = torch.cat([rms_norm(embedded, m.enorm), rms_norm(prev, m.hnorm)], dim=-1) @ self.w_eh
        return self.layer.run(rms_norm(x, m.block.input_layernorm), x)


class MTPHeads(nn.Module):
    """D sequential MTP modules; the target's embedding, final norm and head are passed in, never owned."""

    def __init__(self, cfg: MTPConfig):
        super().__init__()
        self.cfg = cfg
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(cfg.depth))

    # the training loop's checkpoint calls (adaspec.training.checkpoint), as for a transformers model
    def save_pretrained(self, path: str, state_dict: dict | None = None, **_: object) -> None:
        from adaspec.drafters.mtp.export import save_mtp

        save_mtp(self, path, state_dict)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype | None = None) -> MTPHeads:
        from adaspec.drafters.mtp.export import load_mtp

        heads = load_mtp(path)
        return heads if dtype is None else heads.to(dtype)

    def forward(self, parts: TargetParts, hidden: Tensor, input_ids: Tensor) -> list[Tensor]:
        """Training forward. hidden [B, T, H] = the target's final normed states, input_ids [B, T].

        Returns D logits tensors; entry k-1 is [B, T-k, V]: depth k at position i (0 <= i < T-k) predicts
        token i+k+1, so it aligns with the target's own logits at positions k..T-1 (self-distillation) and
        its first T-k-1 rows with the data tokens input_ids[:, k+1:].
        """
        t = input_ids.shape[1]
        if hidden.shape[:2] != input_ids.shape:
            raise AdaspecError(f"hidden states {tuple(hidden.shape)} do not match input ids {tuple(input_ids.shape)}")
        if t <= self.cfg.depth:
            raise AdaspecError(f"sequences of {t} tokens are too short for {self.cfg.depth} MTP depths")
        embedded = parts.embed(input_ids).to(hidden.dtype)
        out, prev = [], hidden
        for k, module in enumerate(self.mtp, start=1):
            prev = module(prev[:, : t - k], embedded[:, k:])
            out.append(parts.logits(prev))
        return out


class _Rows:
    """Final hidden states of consecutive positions start..end-1 of one depth, [end - start, H]."""

    def __init__(self) -> None:
        self.start = 0
        self.rows: Tensor | None = None

    @property
    def end(self) -> int:
        return self.start + (0 if self.rows is None else self.rows.shape[0])

    def extend(self, rows: Tensor) -> None:
        self.rows = rows if self.rows is None else torch.cat([self.rows, rows])

    def since(self, position: int) -> Tensor | None:
        if position < self.start:
            raise ValueError(f"rows before position {self.start} were dropped; asked from {position}")
        return None if self.rows is None else self.rows[position - self.start :]

    def drop_before(self, position: int) -> None:
        if self.rows is not None and position > self.start:
            self.rows = self.rows[position - self.start :]
            self.start = position


class MTPDrafter:
    """Chains the MTP modules after each verification (see the module docstring); γ <= D.

    State: module j's KV cache over its final positions 0..len-1 (in its LeanMTPModule), and the final
    input states of module j (the target's features for j = 0, module j-1's outputs after) from position
    len on: earlier ones are in the cache already, so the kept rows stay a few per depth however long the
    sequence grows.
    """

    hidden_layers: tuple[int, ...] = (FINAL,)

    def __init__(self, heads: MTPHeads, target: PreTrainedModel, vocab: int | None = None):
        self.heads, self.parts = heads, target_parts(target, vocab)
        self.max_gamma: int | None = heads.cfg.depth
        self.versions: tuple[int, ...] | None = None
        self._reset()

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> MTPDrafter:
        """The drafter of modules saved by adaspec.drafters.mtp.export.save_mtp, on the target's device."""
        from adaspec.drafters.mtp.export import load_mtp

        p = next(target.parameters())
        return cls(load_mtp(path, device=p.device).to(p.dtype), target, vocab)

    def _reset(self) -> None:
        if self.versions != weight_versions(self.heads):  # built at first, and again after training
            self.versions = weight_versions(self.heads)
            self.modules = [LeanMTPModule(m, self.heads.cfg) for m in cast("Sequence[MTPModule]", self.heads.mtp)]
        for module in self.modules:
            module.layer.crop(0)
        self.inputs = [_Rows() for _ in range(self.heads.cfg.depth)]  # inputs[0]: the target's features, ends at n-1

    def _append_hidden(self, hidden: Tensor | None) -> None:
        if hidden is not None and hidden.shape[1] > 0:
            self.inputs[0].extend(hidden[0])

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self._reset()
        self._append_hidden(hidden)

    def accept(self, n: int, hidden: Tensor | None) -> None:
        self._append_hidden(hidden)
        if self.inputs[0].end != n - 1:
            raise AdaspecError(f"MTP drafter holds target features of {self.inputs[0].end} positions, expected {n - 1}")

    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        probs: list[Tensor] = []

        def pick(logits: Tensor) -> Tensor:
            if sampling.greedy:
                return logits.argmax(-1, keepdim=True)
            q = sampling.probs(logits)
            probs.append(q)
            return sampling.draw(q)

        proposals, _ = self._chain(seq, n, gamma, pick)
        if proposals is None:  # a one-token prompt: no target features yet, the target takes the step
            empty = torch.zeros(0, dtype=torch.long, device=seq.device)
            return empty, (None if sampling.greedy else torch.zeros(0, self.parts.vocab, device=seq.device))
        return proposals, (torch.stack(probs) if probs else None)

    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, None]:
        """Top-k candidates at each depth along the top-1 chain: module k runs on the chain's tokens, and
        its top-k are the children of every depth-(k-1) node (`per_depth_expand`)."""
        self._check_depth(shape.depth)
        _, logits = self._chain(seq, n, shape.depth, lambda row: row.argmax(-1, keepdim=True))
        if logits is None:
            empty = torch.zeros(0, dtype=torch.long, device=seq.device)
            return Tree(empty, empty, empty), None
        tree = shape.build(per_depth_expand(logits, sampling))
        return tree, None

    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        self.accept(n, hidden)

    def _check_depth(self, gamma: int) -> None:
        if gamma > self.heads.cfg.depth:
            raise AdaspecError(
                f"MTP with {self.heads.cfg.depth} modules proposes at most "
                f"{self.heads.cfg.depth} tokens per step; got gamma {gamma}"
            )

    def _chain(
        self, seq: Tensor, n: int, gamma: int, pick: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor | None, list[Tensor] | None]:
        """Run modules 1..γ at the last position, module k fed the token `pick` chose from module k-1's
        logits; (proposals [γ], per-module logits [V] each), or (None, None) before any target feature."""
        self._check_depth(gamma)
        device = seq.device
        if self.inputs[0].end == 0:
            return None, None
        last = n - 2  # every module runs at the last position with target features
        tokens = seq[:n]
        proposals, rows = [], []
        fresh: Tensor | None = None  # the previous module's outputs at its non-final positions
        for j in range(gamma):  # module k = j + 1 reads t_{i+k}
            module = self.modules[j]
            start = module.layer.length
            done = self.inputs[j].since(start)
            prev = torch.cat([x for x in (done, fresh) if x is not None])
            toks = tokens[start + j + 1 : last + j + 2]
            embedded = self.parts.embed(toks.to(self.parts.embed.weight.device)).to(prev.dtype)
            out = module.run(prev, embedded)
            logits = self.parts.logits(out[-1:]).float()[0]
            rows.append(logits)
            proposals.append(pick(logits).to(device))
            tokens = torch.cat([tokens, proposals[-1]])
            # keep only the positions whose input token is accepted (i <= n-1-k); the rest is redone
            final = max(n - 1 - j, start)
            module.layer.crop(final)
            self.inputs[j].drop_before(final)
            if j + 1 < len(self.inputs):
                self.inputs[j + 1].extend(out[: final - start])
            fresh = out[final - start :]
        return torch.cat(proposals), rows


def build_mtp(target: PreTrainedModel, depth: int = 3, seed: int = 0) -> MTPHeads:
    """Freshly initialised MTP modules for `target` (the same seed gives the same weights)."""
    cfg = MTPConfig.for_target(target, depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = MTPHeads(cfg)
    dtype = next(target.parameters()).dtype
    return heads.to(dtype=dtype, device=next(target.parameters()).device).eval()
