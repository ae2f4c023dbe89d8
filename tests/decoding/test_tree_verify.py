"""Tree verification: greedy = longest matching path, chains = the chain rule, sampling is lossless (chi-square
on the first two generated tokens of toy languages) and the chain rule misapplied to top-k trees is caught."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy import stats

from adaspec.core.sampling import logits_to_probs
from adaspec.core.tree import Tree, build_dynamic_tree
from adaspec.core.tree_verify import verify_tree
from adaspec.core.verify import verify_chain
from adaspec.errors import AdaspecError

V = 8  # toy vocabulary: V * V outcomes for the first two tokens
SAMPLES = 10_000


def _random_probs(g: torch.Generator, rows: int, vocab: int, top_p: float = 1.0) -> torch.Tensor:
    return logits_to_probs(2 * torch.randn(rows, vocab, generator=g), 1.0, top_p)


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_a_chain_gives_exactly_verify_chain(top_p):
    g = torch.Generator().manual_seed(0)
    outcomes = set()
    for trial in range(300):
        gamma = 1 + trial % 5
        p, q = _random_probs(g, gamma + 1, V, top_p), _random_probs(g, gamma, V, top_p)
        proposals = torch.multinomial(q, 1, generator=g).view(-1)
        u = torch.rand(gamma, generator=g)
        k, residual = verify_chain(p, proposals, q, u)
        path, ours = verify_tree(p, Tree.chain(proposals), q, u)
        assert path.tolist() == list(range(int(k)))
        assert torch.equal(ours, residual)
        # deterministic candidates: the chain rule with point-mass proposals
        onehot = torch.nn.functional.one_hot(proposals, V).float()
        k, residual = verify_chain(p, proposals, onehot, u)
        path, ours = verify_tree(p, Tree.chain(proposals), None, u)
        assert path.tolist() == list(range(int(k)))
        assert torch.equal(ours, residual)
        outcomes.add(int(k) == gamma)
        # greedy: one-hot target rows, no draft rows; deterministic candidates on one-hot rows agree
        hard = torch.nn.functional.one_hot(p.argmax(-1), V).float()
        k, residual = verify_chain(hard, proposals, None, None)
        for draws in (None, u):
            path, ours = verify_tree(hard, Tree.chain(proposals), None, draws)
            assert path.tolist() == list(range(int(k)))
            assert torch.equal(ours, residual)
    assert outcomes == {True, False}


def _longest_matching_path(tree: Tree, best: list[int]) -> list[int]:
    """Brute force: the deepest node whose every token equals the target's argmax at its parent."""
    good = [path for path in tree.ancestors() if all(tree.tokens[c] == best[(tree.parents[c] + 1)] for c in path)]
    return max(good, key=len, default=[])


def test_greedy_accepts_the_longest_matching_path():
    g = torch.Generator().manual_seed(1)
    paths = [list(p) for d in (1, 2, 3) for p in itertools.product(range(3), repeat=d)]
    lengths = set()
    for _ in range(200):
        candidates = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(3)])
        tree = Tree.from_paths(paths, candidates)
        # a target that often agrees with the draft's candidates, so that long paths occur
        best = torch.where(
            torch.rand(tree.size + 1, generator=g) < 0.6,
            candidates[0, 0],
            torch.randint(0, V, (tree.size + 1,), generator=g),
        )
        target = torch.nn.functional.one_hot(best, V).float()
        path, nxt = verify_tree(target, tree)
        assert path.tolist() == _longest_matching_path(tree, best.tolist())
        last = path[-1] + 1 if path.numel() else 0
        assert torch.equal(nxt, target[last])
        lengths.add(path.numel())
    assert lengths == {0, 1, 2, 3}


def test_shapes_are_checked():
    tree = Tree.chain(torch.tensor([1, 2]))
    with pytest.raises(AdaspecError, match="target_probs"):
        verify_tree(torch.rand(2, V), tree)
    with pytest.raises(AdaspecError, match="uniforms"):
        verify_tree(torch.rand(3, V), tree, None, torch.rand(3))
    with pytest.raises(AdaspecError, match="draft_probs"):
        verify_tree(torch.rand(3, V), tree, torch.rand(3, V), torch.rand(2))


# ---- losslessness ----


class ToyLanguage:
    """A target p and a draft q after every prefix of up to `depth` tokens, over V tokens."""

    def __init__(self, seed: int, depth: int, top_p: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        prefixes = [pre for d in range(depth + 1) for pre in itertools.product(range(V), repeat=d)]
        p = logits_to_probs(torch.randn(len(prefixes), V, generator=g), 1.0, top_p)
        q = torch.softmax(1.5 * torch.randn(len(prefixes), V, generator=g), -1)  # far from p
        self.p = dict(zip(prefixes, p))
        self.q = dict(zip(prefixes, q))

    def rows(self, table: dict, tree: Tree) -> torch.Tensor:
        """table's distributions after the root and after every node: [N+1, V]."""
        tokens = tree.tokens.tolist()
        return torch.stack([table[()]] + [table[tuple(tokens[j] for j in path)] for path in tree.ancestors()])

    def first_two(self) -> torch.Tensor:
        """The target's joint distribution of the first two tokens, flattened [V * V]."""
        return torch.stack([self.p[()][a] * self.p[(a,)] for a in range(V)]).flatten().double()


def _top_k_tree(lang: ToyLanguage, top_k: int = 3, depth: int = 3, total: int = 10) -> Tree:
    def expand(nodes, tree, k):
        rows = lang.rows(lang.q, tree)[nodes + 1]
        logp, tokens = rows.log().topk(top_k, dim=-1)
        return tokens, logp

    return build_dynamic_tree(expand, top_k=top_k, depth=depth, total_tokens=total)


def _sampled_tree(lang: ToyLanguage, widths: list[int], replacement: bool, g: torch.Generator):
    """Children drawn from the draft (i.i.d. or without replacement); also the distribution each was drawn from."""
    tokens, parents, depths, drawn_from = [], [], [], []
    frontier, prefixes = [-1], [()]
    for d, width in enumerate(widths, start=1):
        q = torch.stack([lang.q[pre] for pre in prefixes])  # [F, V]
        picks = torch.multinomial(q, width, replacement=replacement, generator=g)  # [F, width]
        rows = q.unsqueeze(1).expand(-1, width, -1)
        if not replacement:  # the j-th pick is drawn from q without the earlier picks, renormalised
            onehot = torch.nn.functional.one_hot(picks, V).float()
            rows = rows * (1 - (onehot.cumsum(1) - onehot))
            rows = rows / rows.sum(-1, keepdim=True)
        drawn_from.append(rows.reshape(-1, V))
        picks = picks.tolist()
        parents += [f for f in frontier for _ in range(width)]
        depths += [d] * (len(frontier) * width)
        new_prefixes = [pre + (x,) for pre, row in zip(prefixes, picks) for x in row]
        frontier = list(range(len(tokens), len(tokens) + len(new_prefixes)))
        tokens += [x for row in picks for x in row]
        prefixes = new_prefixes
    tree = Tree(torch.tensor(tokens), torch.tensor(parents), torch.tensor(depths))
    return tree, torch.cat(drawn_from)


def _first_two_counts(lang: ToyLanguage, draw, samples: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Histogram of the first two generated tokens; `draw()` gives (tree, target rows, draft rows or None).
    Also how often two tree tokens were accepted and how often a child other than the first was."""
    counts = torch.zeros(V * V, dtype=torch.float64)
    seen = {"two accepted": 0, "later sibling accepted": 0}
    for _ in range(samples):
        tree, target, draft = draw()
        path, residual = verify_tree(target, tree, draft, torch.rand(tree.size, generator=g))
        path = path.tolist()
        children = tree.children()
        seen["two accepted"] += len(path) >= 2
        seen["later sibling accepted"] += any(children[tree.parents[c] + 1][0] != c for c in path)
        out = tree.tokens[path].tolist() + [int(torch.multinomial(residual, 1, generator=g))]
        if len(out) == 1:  # the next step's first token, straight from the target
            out.append(int(torch.multinomial(lang.p[(out[0],)], 1, generator=g)))
        counts[out[0] * V + out[1]] += 1
    return counts, {k: v / samples for k, v in seen.items()}


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value; outcomes of probability zero must never occur; sparse cells are pooled."""
    assert counts[probs == 0].sum() == 0, "an outcome the target excludes was generated"
    expected = probs / probs.sum() * counts.sum()  # float32 tables: exact totals for scipy
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big & (probs > 0)].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big & (probs > 0)].sum().view(1)])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)


CASES = {  # name -> (tree depth, target top-p, how the tree is drawn, verified with draft rows?)
    "top-k": (3, 1.0, "top-k", False),
    "top-k, top-p": (3, 0.7, "top-k", False),
    "static, top-p": (2, 0.8, "static", False),
    "static, repeated candidates": (2, 1.0, "repeated", False),
    "sampled iid": (2, 1.0, "iid", True),
    "sampled iid, top-p": (2, 0.7, "iid", True),
    "sampled without replacement": (2, 1.0, "without", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tree_sampling_follows_the_target(case):
    depth, top_p, kind, _ = CASES[case]
    g = torch.Generator().manual_seed(7)
    lang = ToyLanguage(seed=3, depth=depth, top_p=top_p)
    if kind == "top-k":
        fixed = _top_k_tree(lang, depth=depth)
    elif kind == "static":  # Medusa-like: each depth's top-3 regardless of the parent
        first = lang.q[()].topk(3).indices
        candidates = torch.stack([first, lang.q[(int(first[0]),)].topk(3).indices])
        fixed = Tree.from_paths([[0], [1], [2], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0]], candidates)
    elif kind == "repeated":  # candidate lists with a token twice: its second copy must never be accepted
        first = lang.q[()].topk(2).indices
        candidates = torch.stack([first[[0, 0, 1]], lang.q[(int(first[0]),)].topk(2).indices[[0, 1, 0]]])
        fixed = Tree.from_paths([[0], [1], [2], [0, 0], [0, 1], [0, 2], [1, 0], [2, 0], [2, 1]], candidates)
    if kind in ("top-k", "static", "repeated"):
        rows = lang.rows(lang.p, fixed)
        draw = lambda: (fixed, rows, None)  # noqa: E731
    else:

        def draw():
            tree, drawn_from = _sampled_tree(lang, [3, 2], kind == "iid", g)
            return tree, lang.rows(lang.p, tree), drawn_from

    tree = draw()[0]
    assert max(len(k) for k in tree.children()) >= 3 and tree.depth >= 2
    counts, seen = _first_two_counts(lang, draw, SAMPLES, g)
    pvalue = _chi2_pvalue(counts, lang.first_two())
    print(f"{case}: chi-square p = {pvalue:.3g}, {seen}")
    assert pvalue > 1e-3
    assert min(seen.values()) > 0.01  # the tree's second level and later siblings are really exercised


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_the_chain_rule_on_top_k_candidates_is_rejected(top_p):
    # Accepting deterministic top-k children by min(1, p/q) with the draft's q, as if they were sampled
    # from q, is the classic mistake; the same test must catch it.
    g = torch.Generator().manual_seed(7)
    lang = ToyLanguage(seed=3, depth=3, top_p=top_p)
    tree = _top_k_tree(lang)
    wrong = lang.rows(lang.q, tree)[tree.parents + 1]  # each child "drawn from" its parent's q
    rows = lang.rows(lang.p, tree)
    counts, _ = _first_two_counts(lang, lambda: (tree, rows, wrong), SAMPLES, g)
    pvalue = _chi2_pvalue(counts, lang.first_two())
    print(f"wrong rule, top-p {top_p}: chi-square p = {pvalue:.3g}")
    assert pvalue < 1e-6
