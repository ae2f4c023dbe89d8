"""Medusa heads (Cai et al. 2024, Medusa-1: the target stays frozen) as a drafter.

Head i (i = 1..K) reads the target's final normed hidden state h_t (adaspec.models.target layer -1,
what the reference feeds its heads: `outputs[0]` of the base model) and predicts token t+1+i, the one i
places after the target's own next token, all heads in parallel from the same h_t:

    x <- x + SiLU(W_l x + b_l)  for each of the head's n residual blocks,   logits_i = lm_head_i(x)

Every block is its own module. The reference repository builds a head's blocks as
`[ResBlock(hidden_size)] * medusa_num_layers` (FasterDecoding/Medusa, medusa/model/medusa_model.py line
114 at e2a5d20c048a9b0a4092e6933c34313687422518), a list of ONE module repeated, so its n > 1 "layers"
share weights; here they do not. W is zero-initialised as there, and so is b (the reference leaves
PyTorch's default bias), so that each block starts as the exact identity: an untrained head with the
copied output layer gives exactly the target's own logits from the same state. The output layer is
either the head's own Linear, initialised from the target's head (default), or the target's frozen
head shared by all heads.

Decoding: a top-1 chain x_1..x_γ with x_i from head i on h_{n-2}, the state that produced the last
accepted token seq[n-1]; γ <= K. Trees: Medusa's static sparse trees, the children of every depth-(i-1)
node being head i's top-k (rank paths as the reference's `medusa_choices`), or EAGLE-2 dynamic trees
scored by the heads' log-probabilities; depth <= K. Under sampling x_i is drawn from head i's own distribution, which
is the
q the acceptance rule divides by, so the chain stays lossless. Medusa's "typical acceptance" is not
lossless and is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import per_depth_expand
from adaspec.core.tree_shape import TreeShape
from adaspec.drafters.target_parts import TargetParts, target_parts
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size
from adaspec.models.target import FINAL, fit_vocab


@dataclass(frozen=True)
class MedusaConfig:
    heads: int
    layers: int
    hidden: int
    vocab: int  # rows of each output layer (the target's output size, padding included)
    bias: bool = True
    shared_head: bool = False  # use the target's frozen head instead of one Linear per head

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """n blocks x + SiLU(W x + b), each with its own weights (vLLM's `blocks.{h}.layers.{l}`)."""

    def __init__(self, hidden: int, layers: int, bias: bool):
        super().__init__()
        linears = [nn.Linear(hidden, hidden, bias=bias) for _ in range(layers)]
        for layer in linears:
            nn.init.zeros_(layer.weight)
            if bias:
                nn.init.zeros_(layer.bias)
        self.layers = nn.ModuleList(linears)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + nn.functional.silu(layer(x))
        return x


class MedusaHeads(nn.Module):
    def __init__(self, cfg: MedusaConfig):
        super().__init__()
        if cfg.heads < 1 or cfg.layers < 0:
            raise AdaspecError(f"Medusa needs >= 1 heads and >= 0 layers per head, got {cfg.heads} and {cfg.layers}")
        self.cfg = cfg
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden, cfg.layers, cfg.bias) for _ in range(cfg.heads))
        self.lm_heads = (
            None
            if cfg.shared_head
            else nn.ModuleList(nn.Linear(cfg.hidden, cfg.vocab, bias=False) for _ in range(cfg.heads))
        )

    # the training loop's checkpoint calls (adaspec.training.checkpoint), as for a transformers model;
    # heads sharing the target's head are saved without it (adaspec.drafters.medusa.export.save_medusa adds it)
    def save_pretrained(self, path: str, state_dict: dict | None = None, **_: object) -> None:
        from adaspec.drafters.medusa.export import save_medusa

        save_medusa(self, path, state_dict=state_dict)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype | None = None) -> MedusaHeads:
        from adaspec.drafters.medusa.export import load_medusa

        heads = load_medusa(path)
        return heads if dtype is None else heads.to(dtype)

    def head_logits(self, parts: TargetParts, hidden: Tensor, i: int) -> Tensor:
        """Head i (0-based) on hidden states [..., H]: logits [..., parts.vocab]."""
        x = self.blocks[i](hidden)
        if self.lm_heads is None:
            return parts.logits_of_normed(x)
        return fit_vocab(self.lm_heads[i](x), parts.vocab)

    def forward(self, parts: TargetParts, hidden: Tensor, input_ids: Tensor) -> list[Tensor]:
        """Training forward: hidden [B, T, H] (final normed target states) -> K logits [B, T, V]; head i
        (1-based) at position t predicts token t+1+i, as MTP depth i does
        (adaspec.drafters.multi_token_loss). `input_ids` is unused (the heads read the state alone): the
        signature is MTPHeads.forward's, so both are called alike."""
        return [self.head_logits(parts, hidden, i) for i in range(self.cfg.heads)]


def build_medusa(
    target: PreTrainedModel, heads: int = 4, layers: int = 1, bias: bool = True, shared_head: bool = False
) -> MedusaHeads:
    """Medusa heads for `target`: identity blocks, and output layers copied from the target's head (unless
    `shared_head`), so training starts from the target's own next-token distribution."""
    head = target.get_output_embeddings()
    cfg = MedusaConfig(heads, layers, int(target.config.hidden_size), output_vocab_size(target), bias, shared_head)
    model = MedusaHeads(cfg)
    if model.lm_heads is not None:
        with torch.no_grad():
            for lm in cast("Sequence[nn.Linear]", model.lm_heads):
                lm.weight.copy_(head.weight)
    p = next(target.parameters())
    return model.to(dtype=p.dtype, device=p.device).eval()


class MedusaDrafter:
    """Top-1 chain from the K heads on the state that produced the last accepted token; γ <= K."""

    hidden_layers: tuple[int, ...] = (FINAL,)

    def __init__(self, heads: MedusaHeads, target: PreTrainedModel, vocab: int | None = None):
        self.heads, self.parts = heads, target_parts(target, vocab)
        self.max_gamma: int | None = heads.cfg.heads
        self.last: Tensor | None = None  # the target's features of position n-2, [H]

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> MedusaDrafter:
        """The drafter of heads saved by adaspec.drafters.medusa.export.save_medusa, on the target's device."""
        from adaspec.drafters.medusa.export import load_medusa

        p = next(target.parameters())
        return cls(load_medusa(path, device=p.device).to(p.dtype), target, vocab)

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self.last = None
        self.accept(prompt.numel(), hidden)

    def accept(self, n: int, hidden: Tensor | None) -> None:
        if hidden is not None and hidden.shape[1] > 0:
            self.last = hidden[0, -1]

    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        if gamma > self.heads.cfg.heads:
            raise AdaspecError(
                f"Medusa with {self.heads.cfg.heads} heads proposes at most "
                f"{self.heads.cfg.heads} tokens per step; got gamma {gamma}"
            )
        device = seq.device
        if self.last is None:  # a one-token prompt: no target features yet, the target alone takes the step
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, (None if sampling.greedy else torch.zeros(0, self.parts.vocab, device=device))
        proposals, probs = [], []
        for i in range(gamma):
            logits = self.heads.head_logits(self.parts, self.last, i).float()
            if sampling.greedy:
                proposals.append(logits.argmax(-1, keepdim=True))
            else:
                q = sampling.probs(logits)
                proposals.append(sampling.draw(q))
                probs.append(q)
        return torch.cat(proposals).to(device), (torch.stack(probs) if probs else None)

    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, None]:
        if shape.depth > self.heads.cfg.heads:
            raise AdaspecError(
                f"Medusa with {self.heads.cfg.heads} heads proposes at most "
                f"{self.heads.cfg.heads} tokens per step; got a tree of depth {shape.depth}"
            )
        if self.last is None:
            empty = torch.zeros(0, dtype=torch.long, device=seq.device)
            return Tree(empty, empty, empty), None
        logits = [self.heads.head_logits(self.parts, self.last, i).float() for i in range(shape.depth)]
        return shape.build(per_depth_expand(logits, sampling)), None

    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        self.accept(n, hidden)
