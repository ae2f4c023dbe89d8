"""Speculative decoding with token trees: a drafter-agnostic loop, and a draft-LM tree proposer.

One step, with seq[:n] accepted and the target cache holding seq[:n-1] (the chain engine's invariant):
the proposer hangs a tree below seq[n-1]; the target runs ONE forward over [seq[n-1], nodes] with the
tree mask; `verify_tree` picks the accepted root-to-node path and the distribution of the next token;
the cache is compacted to seq[:n-1] + seq[n-1] + the path, which is the new seq[:n'-1] (n' = n + k + 1),
so the invariant holds again with nothing recomputed.

`ProposeTree(seq, n, temperature, top_p, generator) -> (tree, draft rows or None)`: a tree below
seq[n-1]; the draft rows [N, V] are the distributions the nodes were sampled from, None when the
children are chosen deterministically (top-k), which the verification rule treats as such (lossless at
any temperature, see tree_verify). The lead connects this to the Drafter protocol.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from transformers import DynamicCache, PreTrainedModel

from adaspec.decoding.generate import _eos_set, _prompt, _truncate
from adaspec.decoding.sampling import check_sampling, logits_to_probs, make_generator, sample
from adaspec.decoding.target import Clock, fit_vocab
from adaspec.decoding.tree import EAGLE_DEPTH, EAGLE_TOP_K, EAGLE_TOTAL_TOKENS, Tree, build_dynamic_tree
from adaspec.decoding.tree_target import _cache_arg, check_tree_attention, compact_cache, masked_forward, tree_forward
from adaspec.decoding.tree_verify import verify_tree
from adaspec.errors import AdaspecError
from adaspec.metrics import SpecStats
from adaspec.models import output_vocab_size

ProposeTree = Callable[[torch.Tensor, int, float, float, "torch.Generator | None"], tuple[Tree, "torch.Tensor | None"]]


class _Prefix:
    """A model's KV cache of a prefix of seq; `tokens` are the ids it holds, so that a call with another
    sequence (a new prompt, a rolled-back step) keeps only the common prefix."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.device = next(model.parameters()).device
        self.cache_arg = _cache_arg(model)
        self.tokens = torch.empty(0, dtype=torch.long, device=self.device)

    @property
    def seen(self) -> int:
        return self.tokens.numel()

    def keep_common(self, seq: torch.Tensor, length: int) -> None:
        """Crop the cache to its longest prefix that equals seq[:length]."""
        m = min(self.seen, length)
        differs = (self.tokens[:m] != seq[:m].to(self.device)).nonzero()
        same = int(differs[0]) if differs.numel() else m
        if same < self.seen:
            self.cache.crop(same - self.seen)
            self.tokens = self.tokens[:same]

    def catch_up(self, seq: torch.Tensor, length: int) -> None:
        """Make the cache hold exactly seq[:length]."""
        self.keep_common(seq, length)
        if self.seen < length:
            self.model(input_ids=seq[self.seen:length].to(self.device).unsqueeze(0), use_cache=True,
                       **{self.cache_arg: self.cache})
            self.tokens = seq[:length].to(self.device).clone()


class LMTreeProposer:
    """Top-k trees from a separate draft LM, EAGLE-2 style (`build_dynamic_tree`).

    The draft's cache follows the tree within a step: round 1 feeds the tokens accepted since the last
    step (the root last) and takes the root's children; each later round feeds only the new frontier
    nodes, each seeing the prefix, the root and its ancestors (fed in earlier rounds). A tree of depth D
    thus costs D draft forwards, as a chain of γ = D does. Afterwards the cache is cropped back to
    seq[:n] (the accepted path is re-fed next step; keeping its rows instead is the alternative the
    benchmark is to weigh). Children are top-k: no draft rows are returned.
    """

    def __init__(self, draft: PreTrainedModel, vocab: int, top_k: int = EAGLE_TOP_K, depth: int = EAGLE_DEPTH,
                 total_tokens: int = EAGLE_TOTAL_TOKENS):
        check_tree_attention(draft)
        self.prefix, self.vocab = _Prefix(draft), vocab
        self.top_k, self.depth, self.total_tokens = top_k, depth, total_tokens

    def __call__(self, seq: torch.Tensor, n: int, temperature: float, top_p: float,
                 generator: torch.Generator | None) -> tuple[Tree, None]:
        self.prefix.keep_common(seq, n - 1)  # round 1 feeds the rest, the root last
        model, cache, base = self.prefix.model, self.prefix.cache, n - 1
        t = 1.0 if temperature == 0 else temperature
        slots: dict[int, int] = {-1: base}  # node id (-1 = root) -> its row in the draft cache

        def expand(nodes: torch.Tensor, tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
            ids = nodes.tolist()
            cached = cache.get_seq_length()
            if ids == [-1]:  # a plain causal forward (the model's own fast mask path), as a chain's draft
                out = model(input_ids=seq[cached:n].to(self.prefix.device).unsqueeze(0), use_cache=True,
                            **{self.prefix.cache_arg: cache})
                logits = fit_vocab(out.logits[0, -1:].float(), self.vocab)
            else:
                tokens, positions = tree.tokens[nodes], tree.depths[nodes] + base
                visible = torch.zeros(len(ids), cached + len(ids), dtype=torch.bool)
                visible[:, :n] = True
                ancestors = tree.ancestors()
                for row, node in enumerate(ids):
                    visible[row, [slots[a] for a in ancestors[node][:-1]]] = True
                    visible[row, cached + row] = True
                    slots[node] = cached + row
                logits, _ = masked_forward(model, cache, tokens, positions, visible, self.vocab)
            values, children = torch.log(logits_to_probs(logits, t, top_p)).topk(self.top_k, dim=-1)
            return children, values

        tree = build_dynamic_tree(expand, self.top_k, self.depth, self.total_tokens)
        cache.crop(n - cache.get_seq_length())
        self.prefix.tokens = seq[:n].to(self.prefix.device).clone()
        return tree, None


@torch.inference_mode()
def tree_speculative_generate(target: PreTrainedModel, propose: ProposeTree, input_ids: torch.Tensor,
                              max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                              eos_token_id: int | Iterable[int] | None = None,
                              generator: torch.Generator | None = None, seed: int | None = None
                              ) -> tuple[torch.Tensor, SpecStats]:
    """Generate after one prompt with tree verification; returns (sequence [1, n], stats).

    Greedy (temperature 0) output is the target's greedy decoding; otherwise the target's
    temperature / top-p distribution exactly. Stats count one step per tree, `drafted` = tree nodes.
    """
    check_sampling(temperature, top_p)
    check_tree_attention(target)
    prompt = _prompt(input_ids, max_new_tokens, {"target": target})
    vocab = output_vocab_size(target)
    device = next(target.parameters()).device
    cache = DynamicCache(config=target.config)
    generator = make_generator(generator, seed, device)
    eos, clock = _eos_set(eos_token_id), Clock(device)
    stats = SpecStats(sequences=1)
    n, total = prompt.numel(), prompt.numel() + max_new_tokens
    seq = torch.empty(total, dtype=torch.long, device=device)
    seq[:n] = prompt.to(device)
    t0 = clock()
    if n > 1:  # the cache gets the prompt but its last token, the first tree's root
        target(input_ids=seq[None, : n - 1], use_cache=True, **{_cache_arg(target): cache})
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        s0 = clock()
        tree, draft_rows = propose(seq, n, temperature, top_p, generator)
        if tree.size == 0:
            raise AdaspecError("the tree proposer returned an empty tree")
        s1 = clock()
        logits, _ = tree_forward(target, cache, n - 1, seq[n - 1], tree, vocab)
        probs = logits_to_probs(logits, temperature, top_p)
        uniforms = None if temperature == 0 else torch.rand(tree.size, generator=generator, device=probs.device)
        path, nxt = verify_tree(probs, tree, draft_rows, uniforms)
        token = nxt.argmax(-1, keepdim=True) if temperature == 0 else sample(nxt, generator)
        compact_cache(cache, n - 1, tree.size, path)
        s2 = clock()
        k = path.numel()
        accepted = tree.tokens[path.to(tree.tokens.device)].to(token.device)
        new, stop = _truncate(torch.cat([accepted, token]).tolist()[: total - n], eos)
        m = len(new)
        seq[n:n + m] = torch.tensor(new, dtype=torch.long, device=seq.device)
        stats.record_step(tree.size, k, m)
        stats.draft_time_s += s1 - s0
        stats.target_time_s += s2 - s1
        n += m
        if stop:
            break
    stats.decode_time_s = clock() - t1
    return seq[:n].unsqueeze(0), stats
