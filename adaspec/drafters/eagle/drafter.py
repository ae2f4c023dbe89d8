"""The EAGLE head as a chain drafter of the speculative-decoding engine (adaspec.decoding.drafter.Drafter).

State between steps, with seq[:n] accepted: the head's KV cache holds its pairs (h_p, seq[p+1]) built from
REAL target features for p < `real`, and `pending` holds the projected target features of positions
real..n-2 that arrived with the last verification. A step first runs the pending pairs (one forward: the
features the target just produced for the accepted tokens), whose last output gives proposal 1; each
further proposal is one single-pair forward fed the head's own output and the proposal before. Accepting
crops the cache back to the real pairs, because the draft pairs were built on the head's own features,
not the target's (as the EAGLE reference re-runs them).

Trees (EAGLE-2): the pending pairs run first as for a chain; their last output gives the root's
children. Each later round feeds the frontier nodes together, each with its parent's output as the hidden
and its own token, at position n-2+depth, attending to the real pairs, its ancestors' rows and itself
(tree attention in the head's own layer): one head forward per depth, as a chain. After verification the draft rows
are dropped and the accepted path re-run with the target's
features (`keep_tree_rows` False, the reference's choice: what the head is run on at every other position);
with True the fed rows of the accepted path are kept (`LeanLayer.keep`) and only the positions after
them run on target features. benchmarks/tree.py measures both (README).

Decoding runs the head on `LeanEagle`, its lean view (adaspec.drafters.lean_layer), tested against
`EagleHead.step`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import TreeRows, top_children
from adaspec.core.tree_shape import TreeShape
from adaspec.drafters.eagle.draft_vocab import to_target_space
from adaspec.drafters.eagle.model import EagleHead
from adaspec.drafters.lean_layer import LeanLayer, rms_norm, weight_versions
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size


def load_target_check(head_vocab: int, target_vocab: int, path: str) -> None:
    if head_vocab != target_vocab:
        raise AdaspecError(
            f"the head in {path} was trained for a {head_vocab}-token vocabulary, the target has {target_vocab}"
        )


class LeanEagle:
    """`EagleHead.step` and `.logits` on the lean decode path, with the layer's KV cache (`layer`)."""

    def __init__(self, head: EagleHead):
        cfg, layer = head.config, head.layer
        self.head, self.fused, self.eagle3 = head, layer.fused, cfg.variant == "eagle3"
        self.embed = head.embed_tokens.weight.detach()
        self.layer = LeanLayer(
            layer.self_attn,
            layer.post_attention_layernorm,
            layer.mlp,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.rope_theta,
        )

    def step(
        self, tokens: Tensor, hidden: Tensor, positions: Tensor | None = None, visible: Tensor | None = None
    ) -> Tensor:
        """`EagleHead.step` for tokens [T] and hidden [T, H] after the cached rows (positions and visible
        as `LeanLayer.run`): the output hidden [T, H]."""
        emb = F.embedding(tokens, self.embed).to(hidden.dtype)
        if not self.eagle3:
            hidden = self.head.fc(torch.cat([emb, hidden], dim=-1))
        layer = self.head.layer
        x = (
            torch.cat([rms_norm(emb, layer.input_layernorm), rms_norm(hidden, layer.hidden_norm)], dim=-1)
            if self.fused
            else hidden
        )
        return self.layer.run(x, hidden, positions, visible)

    def logits(self, hidden: Tensor) -> Tensor:
        return F.linear(rms_norm(hidden, self.head.norm) if self.eagle3 else hidden, self.head.lm_head.weight)


class EagleDrafter:
    max_gamma: int | None = None
    lean: LeanEagle  # set by `_reset`, as are `real` and `pending` (the module docstring)
    real: int
    pending: Tensor | None

    def __init__(self, head: EagleHead, keep_tree_rows: bool = False):
        self.head = head.eval()
        self.hidden_layers: tuple[int, ...] = head.config.hidden_layers
        self.device = head.fc.weight.device
        self.versions: tuple[int, ...] | None = None
        self.keep_tree_rows = keep_tree_rows
        self._rows: tuple[TreeRows, Tree] | None = None  # with keep_tree_rows, the last tree's
        self._reset()

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> EagleDrafter:
        """The drafter of a head saved by `train-head --kind eagle`, on the target's device and dtype."""
        p = next(target.parameters())
        head = EagleHead.from_pretrained(path).to(device=p.device, dtype=p.dtype)
        load_target_check(head.config.vocab_size, vocab or output_vocab_size(target), path)
        return cls(head)

    def _project(self, hidden: Tensor) -> Tensor:
        """[layers, m, H_target] target features -> [m, H] the layer reads (layers concatenated in order)."""
        m = hidden.shape[1]
        return self.head.project(hidden.to(self.device).permute(1, 0, 2).reshape(m, -1))

    def _take(self, hidden: Tensor | None) -> None:
        if hidden is None or hidden.shape[1] == 0:
            return
        new = self._project(hidden)
        self.pending = new if self.pending is None else torch.cat([self.pending, new])

    def _reset(self) -> None:
        if self.versions != weight_versions(self.head):  # built at first, and again after training
            self.versions = weight_versions(self.head)
            self.lean = LeanEagle(self.head)
        self.lean.layer.crop(0)
        self.real, self.pending = 0, None

    @torch.no_grad()
    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self._reset()
        self._take(hidden)

    @torch.no_grad()
    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        vocab = self.head.config.vocab_size
        if n == 1:  # no target feature exists before the first verification: nothing to draft from
            return (
                torch.empty(0, dtype=torch.long, device=self.device),
                None if sampling.greedy else torch.zeros(0, vocab, device=self.device),
            )
        hidden = self._run_pending(seq, n)
        proposals, draft_probs = [], []
        for i in range(gamma):
            logits = self.lean.logits(hidden)[-1].float()
            if sampling.greedy:
                token = self.head.draft_to_target(logits.argmax(-1, keepdim=True))
            else:
                q = to_target_space(sampling.probs(logits), self.head.d2t, vocab)
                token = sampling.draw(q)
                draft_probs.append(q)
            proposals.append(token)
            if i + 1 < gamma:
                hidden = self.lean.step(token, hidden)
        return torch.cat(proposals), torch.stack(draft_probs) if draft_probs else None

    def _run_pending(self, seq: Tensor, n: int) -> Tensor:
        """Run the pairs of real target features not in the cache yet; the last output [1, H]."""
        m = 0 if self.pending is None else self.pending.shape[0]
        if self.real + m != n - 1 or m == 0:
            raise RuntimeError(
                f"EAGLE drafter out of step: {self.real} cached + {m} pending features for {n} accepted tokens"
            )
        assert self.pending is not None  # m > 0
        hidden = self.lean.step(seq[self.real + 1 : n].to(self.device), self.pending)[-1:]
        self.real, self.pending = n - 1, None
        return hidden

    @torch.no_grad()
    def accept(self, n: int, hidden: Tensor | None) -> None:
        self.lean.layer.crop(self.real)
        self._take(hidden)

    @torch.no_grad()
    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, None]:
        if n == 1:
            empty = torch.empty(0, dtype=torch.long, device=self.device)
            return Tree(empty, empty, empty), None
        outputs = {-1: self._run_pending(seq, n)}  # node -> the head's output there, [1, H]
        rows = TreeRows(prefix=self.real)
        lean = self.lean

        def expand(nodes: Tensor, tree: Tree, k: int) -> tuple[Tensor, Tensor]:
            ids = nodes.tolist()
            if ids == [-1]:
                out = outputs[-1]
            else:
                parents = tree.parents.tolist()
                prev = torch.cat([outputs[parents[i]] for i in ids])
                cached = lean.layer.length
                visible = None if rows.continues_chain(tree, ids, cached) else rows.visibility(tree, ids, cached)
                positions = (tree.depths[nodes] + (n - 2)).to(self.device)
                out = lean.step(tree.tokens[nodes].to(self.device), prev, positions, visible)
                for r, i in enumerate(ids):
                    outputs[i] = out[r : r + 1]
            draft_ids, logp = top_children(lean.logits(out), k, sampling)
            return self.head.draft_to_target(draft_ids), logp

        tree = shape.build(expand)
        if self.keep_tree_rows:
            self._rows = (rows, tree)
        else:
            self.lean.layer.crop(self.real)
        return tree, None

    @torch.no_grad()
    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        kept_rows, self._rows = self._rows, None
        if kept_rows is None:
            self.accept(n, hidden)
            return
        rows, tree = kept_rows
        kept = rows.fed_prefix(tree, path.tolist())
        self.lean.layer.keep(self.real, kept)
        self.real += len(kept)
        self._take(None if hidden is None else hidden[:, len(kept) :])
