"""A causal LM with its KV cache, as the decode loops drive it: feed new tokens, get logits (and hidden
states of chosen layers from the same forward), roll back.

The target of speculative decoding and a separate draft LM both run through `CachedLM`. Drafters that
read the target's features (EAGLE, MTP, Medusa heads) ask for layers by index: i in [0, L) is the output
of decoder layer i (transformers' `hidden_states[i + 1]` for i < L − 1; of the last layer transformers only
reports the normed state), `FINAL` (-1) the final normed state that the output head sees. Only those modules are
hooked, so no copy of the other layers is ever kept.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from adaspec.data import Batch
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size

FINAL = -1
_LAYER_LISTS = ("layers", "h")  # Llama / Qwen / Mistral / GPT-NeoX, GPT-2
_FINAL_NORMS = ("norm", "final_layer_norm", "ln_f")


def _base(model: PreTrainedModel) -> nn.Module:
    return getattr(model, "base_model", model)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The model's stack of decoder layers (Llama-like, GPT-NeoX and GPT-2 layouts)."""
    for name in _LAYER_LISTS:
        layers = getattr(_base(model), name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise AdaspecError(
        f"cannot find the decoder layers of {type(model).__name__}, so its hidden states are "
        "not accessible to a feature drafter"
    )


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The norm applied after the last decoder layer, before the output head."""
    for name in _FINAL_NORMS:
        norm = getattr(_base(model), name, None)
        if isinstance(norm, nn.Module):
            return norm
    raise AdaspecError(f"cannot find the final norm of {type(model).__name__}")


def hidden_modules(model: PreTrainedModel, layers: tuple[int, ...]) -> list[nn.Module]:
    """The module whose output is each requested hidden state (see the module docstring for indices)."""
    stack = decoder_layers(model)
    check_layer_ids(layers, len(stack))
    return [final_norm(model) if i == FINAL else stack[i] for i in layers]


def config_dims(config: PretrainedConfig) -> tuple[int, int]:
    """(decoder layers, hidden size) from a model config (Llama/NeoX names, or GPT-2's n_layer/n_embd)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not isinstance(layers, int) or not isinstance(hidden, int):
        raise AdaspecError(f"cannot read the layer count and hidden size of a {type(config).__name__}")
    return layers, hidden


def check_layer_ids(layers: tuple[int, ...], num_layers: int) -> None:
    """Refuse a hidden-layer id that is neither a decoder layer of an L-layer model nor FINAL."""
    for i in layers:
        if i != FINAL and not 0 <= i < num_layers:
            raise AdaspecError(
                f"hidden layer {i} is out of range for a {num_layers}-layer target "
                f"(use 0..{num_layers - 1}, or {FINAL} for the final normed state)"
            )


def context_length(model: PreTrainedModel) -> int | None:
    """Positions the model can attend to (None when its config does not say)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if n is None:
        n = getattr(model.config, "n_positions", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward's KV-cache argument: `cache` from transformers 5.24 on, `past_key_values` before (and
    removed in 5.40), so the same call works on both sides of the rename."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def fit_vocab(logits: Tensor, vocab: int) -> Tensor:
    """Logits over exactly `vocab` ids: padded output rows beyond it dropped, missing ones at -inf (never
    proposed), so models whose output sizes differ only by padding share one id space."""
    own = logits.shape[-1]
    if own > vocab:
        return logits[..., :vocab]
    if own < vocab:
        return torch.nn.functional.pad(logits, (0, vocab - own), value=-math.inf)
    return logits


@contextlib.contextmanager
def capture(modules: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Forward hooks on `modules` for one forward: the list fills with each module's output, in the order
    of `modules` (not of execution); the hooks are removed on exit."""
    captured: list[Tensor] = []
    slots: list[Tensor | None] = [None] * len(modules)

    def keeper(j: int):
        def hook(_module: nn.Module, _inputs: tuple, out: Tensor | tuple) -> None:
            slots[j] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [m.register_forward_hook(keeper(j)) for j, m in enumerate(modules)]
    try:
        yield captured
        captured.extend(x for x in slots if x is not None)
    finally:
        for h in handles:
            h.remove()


def features(model: PreTrainedModel, batch: Batch, layers: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(logits [B, T, V], hidden states [len(layers), B, T, H]) of full sequences, from one forward: what a
    feature head trains on."""
    with capture(hidden_modules(model, layers)) as captured:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits, torch.stack(captured)


class CachedLM:
    """A causal LM plus its DynamicCache; `seen` counts the tokens in the cache."""

    def __init__(self, model: PreTrainedModel, vocab: int, name: str, hidden_layers: tuple[int, ...] = ()):
        self.model, self.vocab, self.seen = model, vocab, 0
        self.cache = DynamicCache(config=model.config)
        if not getattr(self.cache, "is_croppable", True):
            raise AdaspecError(
                f"the {name} model's KV cache cannot be rolled back (sliding-window or "
                "recurrent layers), so it cannot be used for speculative decoding"
            )
        self.device = next(model.parameters()).device
        self.own_vocab = output_vocab_size(model)
        self.hidden_layers = tuple(hidden_layers)
        self._hooked = hidden_modules(model, self.hidden_layers) if self.hidden_layers else []
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._cache_arg = cache_kwarg(model)

    def forward(
        self, tokens: Tensor, keep: int = 1, positions: Tensor | None = None, tree_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Feed 1-D `tokens` after the cached ones. Returns float32 logits of the last `keep` positions
        [keep, vocab] and the requested hidden states of every fed position [layers, len(tokens), H]
        (None when no layers were requested). `positions` and `tree_mask` as LeanLM.forward takes them
        (token trees, through adaspec.models.tree_target.masked_forward)."""
        if tree_mask is not None:
            return self._masked(tokens, keep, positions, tree_mask)
        tokens = tokens.to(self.device).unsqueeze(0)
        kwargs = {"logits_to_keep": keep} if self._keep_arg else {}
        with capture(self._hooked) as captured:
            logits = self.model(input_ids=tokens, use_cache=True, **{self._cache_arg: self.cache}, **kwargs).logits
        self.seen += tokens.shape[1]
        logits = fit_vocab(logits[0, -keep:].float(), self.vocab)
        hidden = torch.stack([h[0] for h in captured]) if captured else None
        return logits, hidden

    def crop(self, length: int) -> None:
        """Roll the cache back to its first `length` tokens (negative crop = tokens to remove, in 4.x and 5.x)."""
        if length < self.seen:
            self.cache.crop(length - self.seen)
            self.seen = length

    def _masked(
        self, tokens: Tensor, keep: int, positions: Tensor | None, tree_mask: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        from adaspec.models.tree_target import masked_forward  # it builds on this module

        t = tokens.shape[0]
        if positions is None:
            positions = torch.arange(self.seen, self.seen + t)
        visible = tree_mask.cpu().bool()
        if visible.shape[-1] != self.seen + t:
            visible = torch.cat([torch.ones(t, self.seen, dtype=torch.bool), visible], dim=1)
        logits, hidden = masked_forward(self.model, self.cache, tokens, positions, visible, self.vocab, self._hooked)
        self.seen += t
        return logits[-keep:], hidden

    def keep_path(self, start: int, indices: Sequence[int] | Tensor) -> None:
        """As LeanLM.keep_path: keep the new tokens at offsets `indices` after the first `start` cached ones."""
        from adaspec.models.tree_target import keep_rows

        self.seen = keep_rows(self.cache, start, torch.as_tensor(indices, dtype=torch.long).reshape(-1))


class Clock:
    """perf_counter timestamps, synchronising CUDA first so they measure finished work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def default_aux_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low / middle / high layers for an L-layer target, in adaspec ids.

    The reference, vLLM and SGLang capture (2, L//2, L-3) as the *input* of those decoder layers, i.e. the
    outputs of layers (1, L//2 - 1, L - 4). Shallow targets clamp into [0, L-2] (neither server can capture
    the last layer's output) and are spread to distinct layers where there is room.
    """
    if num_layers < 1:
        raise AdaspecError(f"the target has {num_layers} decoder layers; an EAGLE head needs at least one")
    hi = max(num_layers - 2, 0)
    ids = sorted(min(max(i, 0), hi) for i in (1, num_layers // 2 - 1, num_layers - 4))
    for j in (1, 2):
        if ids[j] <= ids[j - 1] < hi:
            ids[j] = ids[j - 1] + 1
    return ids[0], ids[1], ids[2]
