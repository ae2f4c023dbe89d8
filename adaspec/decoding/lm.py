"""A separate small causal LM as the drafter (DistillSpec / AdaSPEC draft models)."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import TreeRows, top_children
from adaspec.core.tree_shape import TreeShape
from adaspec.errors import AdaspecError
from adaspec.models.lean import DraftLeanLM, cached_lm

# The default stop threshold of speculative_generate's draft models (see LMDrafter): off. On the `make demo` pair
# the distilled drafts' top probability is mostly 0.1-0.3 and barely separates the proposals the target keeps
# from those it rejects, so every threshold tried cost tokens/s (benchmarks/step_profile.py --confidences,
# results/benchmarks/step_profile_demo.json).
DRAFT_CONFIDENCE = 0.0


class LMDrafter:
    """Drafts autoregressively from its own KV cache.

    Runs on the lean decode path where the draft's family supports it (adaspec.models.lean; a
    GPT-NeoX draft takes adaspec.models.lean.draft's folded layer).
    Cache invariant: the draft holds a prefix seq[:k] of the accepted tokens, k < n; it catches up on
    seq[k:n] (the correction or bonus token, and after a fully accepted step the last proposal it never
    fed) in its first forward of the next step, so nothing accepted is recomputed.

    Trees (EAGLE-2 style): round 1 is the chain's first forward (catch up, the root last) and gives the
    root's children; each later round feeds the new frontier nodes at once, each seeing the prefix and
    its own ancestors' rows only (tree attention on the draft's own cache), so a tree of depth D costs D
    draft forwards as a chain of γ = D does. Afterwards, with `keep_tree_rows` False (default) the cache
    is cropped back to seq[:n] and the next step re-feeds the accepted path with the bonus token; with
    True the accepted path's rows are moved into place (keep_path) and only what follows is fed. Which is
    cheaper is measured by benchmarks/tree.py (README); the rows are the same either way.

    `confidence`: a step's chain stops after the first proposal the draft itself gives a probability below
    it (its top probability when greedy, the sampled token's when sampling), as transformers' assisted
    generation does with `assistant_confidence_threshold`: a token the draft doubts is likely rejected, and
    every draft forward and verified position after it would be paid for nothing. The stop depends on the
    draft alone, so decoding stays lossless. 0 always drafts γ tokens.
    """

    hidden_layers: tuple[int, ...] = ()
    max_gamma: int | None = None

    def __init__(
        self,
        model: PreTrainedModel,
        vocab: int,
        lean: bool | None = None,
        keep_tree_rows: bool = False,
        confidence: float = 0.0,
    ):
        if not 0.0 <= confidence <= 1.0:
            raise AdaspecError(f"the draft confidence threshold must be in [0, 1], got {confidence}")
        self.model, self.vocab, self.confidence = model, vocab, confidence
        self.lm = cached_lm(model, vocab, "draft", lean=lean, lean_type=DraftLeanLM)
        self.keep_tree_rows = keep_tree_rows
        self._rows: tuple[TreeRows, Tree] | None = None  # with keep_tree_rows, the last tree's

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> LMDrafter:
        """A draft model directory, checked against the target's tokenizer and sizes (models.check_vocab_compatible)."""
        from adaspec.models import check_vocab_compatible, load_model, output_vocab_size, saved_tokenizer

        draft = load_model(path, device=next(target.parameters()).device)
        target_dir = getattr(target, "name_or_path", None)
        check_vocab_compatible(
            target, draft, saved_tokenizer(target_dir) if target_dir else None, saved_tokenizer(path)
        )
        return cls(draft, vocab or output_vocab_size(target))

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self.lm.crop(0)  # the same preallocated cache serves every sequence
        if prompt.numel() > 1:  # the prompt's last token is fed by the first proposal step
            self.lm.forward(prompt[:-1])

    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        feed = seq[self.lm.seen : n]
        proposals, draft_probs = [], []
        for i in range(gamma):
            logits = self.lm.forward(feed)[0]  # [1, V]
            check = self.confidence > 0 and i < gamma - 1  # the last proposal ends the chain anyway
            if sampling.greedy:
                if check:  # the top probability and its token in two ops
                    conf, feed = torch.softmax(logits, -1).max(-1)
                else:
                    feed = logits.argmax(-1)
            else:
                q = sampling.probs(logits[0])
                feed = sampling.draw(q)
                draft_probs.append(q)
                if check:
                    conf = q[feed]
            proposals.append(feed)
            if check and float(conf) < self.confidence:  # a host sync per draft token, only with a threshold
                break
        return torch.cat(proposals), torch.stack(draft_probs) if draft_probs else None

    def accept(self, n: int, hidden: Tensor | None) -> None:
        self.lm.crop(n - 1)

    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, None]:
        lm, base = self.lm, n - 1
        rows = TreeRows(prefix=n)

        def expand(nodes: Tensor, tree: Tree, k: int) -> tuple[Tensor, Tensor]:
            ids = nodes.tolist()
            if ids == [-1]:  # the chain's first forward: catch up to seq[:n]
                logits = lm.forward(seq[lm.seen : n])[0]
            elif rows.continues_chain(tree, ids, lm.seen):  # a chain step: the drafter's cheapest forward
                logits = lm.forward(tree.tokens[nodes])[0]
            else:
                visible = rows.visibility(tree, ids, lm.seen)
                logits = lm.forward(
                    tree.tokens[nodes], keep=len(ids), positions=tree.depths[nodes] + base, tree_mask=visible
                )[0]
            return top_children(logits, k, sampling)

        tree = shape.build(expand)
        if self.keep_tree_rows:
            self._rows = (rows, tree)
        else:
            lm.crop(n)
        return tree, None

    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        kept_rows, self._rows = self._rows, None
        if kept_rows is None:
            self.accept(n, hidden)
            return
        rows, tree = kept_rows
        kept = rows.fed_prefix(tree, path.tolist())
        self.lm.keep_path(rows.prefix, [r - rows.prefix for r in kept])
