"""The target's forward over a token tree on its KV cache, and the cache compaction after verification, on
the transformers path (`CachedLM.forward(tree_mask=...)` and `CachedLM.keep_path` call these).

One forward feeds the root (the last accepted token) and the N nodes after the `seen` cached tokens, with
a 4-D additive attention mask (every fed token sees the whole cached prefix, then the root and its own
ancestors) and position ids seen + depth. Afterwards the cache holds the prefix, the root and all N
nodes; `keep_rows` keeps the prefix, the root and the accepted path only, by moving the accepted
nodes' key/value rows into place and cropping (nothing is recomputed).

Custom masks: in transformers 5.x a model whose modeling file builds its mask with
`masking_utils.create_causal_mask` returns a 4-D `attention_mask` as given (`_preprocess_mask_arguments`
exits early on ndim 4); the eager and SDPA attention functions add a float mask to the scores. Llama,
GPT-NeoX and GPT-2 all do this. Flash-attention kernels take no arbitrary mask, flex attention needs a
BlockMask, and families with their own mask code (or no attention) may ignore it, so those are refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, masking_utils

from adaspec.errors import AdaspecError
from adaspec.models.target import cache_kwarg, fit_vocab
from adaspec.models.target import capture as hooked

_MASKABLE_ATTENTION = ("eager", "sdpa")


def check_tree_attention(model: PreTrainedModel) -> None:
    """AdaspecError unless the model's attention takes a custom 4-D mask (see the module doc)."""
    kind = getattr(model.config, "model_type", type(model).__name__)
    module = sys.modules.get(type(model).__module__)
    if getattr(module, "create_causal_mask", None) is not masking_utils.create_causal_mask:
        raise AdaspecError(
            f"{kind} models cannot verify token trees: the model does not take a custom 4-D "
            "attention mask (use chains instead)"
        )
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in _MASKABLE_ATTENTION:
        raise AdaspecError(
            f"the {kind} model uses attention implementation {impl!r}, which takes no tree mask: "
            "load it with attn_implementation='sdpa' or 'eager' to verify token trees"
        )


def additive_mask(visible: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, T, K] additive mask from a [T, K] bool `visible`: 0 where visible, the dtype's minimum elsewhere."""
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible.cpu(), torch.finfo(dtype).min)
    return mask.to(device)[None, None]


_CACHE_ARGS: dict[type, str] = {}


def _cache_arg(model: PreTrainedModel) -> str:
    # cache_kwarg once per model class: inspect.signature costs about as much as a tiny model's forward,
    # and the tree proposer makes several forwards per step
    name = _CACHE_ARGS.get(type(model))
    if name is None:
        name = _CACHE_ARGS[type(model)] = cache_kwarg(model)
    return name


def masked_forward(
    model: PreTrainedModel,
    cache: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    visible: torch.Tensor,
    vocab: int | None = None,
    capture: Sequence[nn.Module] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feed `tokens` [T] at `positions` [T] after the cached ones, token t seeing the cache slots and fed
    tokens where visible[t] ([T, cached + T] bool) is True. The cache grows by T.

    Returns float32 logits [T, V] and, as CachedLM.forward does, the outputs of the `capture` modules
    (e.g. decoder layers, for feature drafters) at every fed position, [len(capture), T, H], or None.
    `vocab`, when given, trims or pads (with -inf) the output rows to the target vocabulary.
    """
    check_tree_attention(model)
    if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ())):
        raise AdaspecError(
            f"the {model.config.model_type} model has sliding-window attention layers, which a "
            "tree mask over the whole prefix would overrule: use chains instead"
        )
    cached = cache.get_seq_length()
    if visible.shape != (tokens.shape[0], cached + tokens.shape[0]):
        raise AdaspecError(
            f"visibility must be [{tokens.shape[0]}, {cached + tokens.shape[0]}] for "
            f"{tokens.shape[0]} tokens after {cached} cached, got {tuple(visible.shape)}"
        )
    param = next(model.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    with hooked(list(capture)) as captured:
        out = model(
            input_ids=tokens.to(param.device).unsqueeze(0),
            position_ids=positions.to(param.device).unsqueeze(0),
            attention_mask=additive_mask(visible, dtype, param.device),
            use_cache=True,
            **{_cache_arg(model): cache},
        )
    logits = out.logits[0].float()
    hidden = torch.stack([h[0] for h in captured]) if captured else None
    return (logits if vocab is None else fit_vocab(logits, vocab)), hidden


def keep_rows(cache: Any, start: int, offsets: torch.Tensor) -> int:
    """Move the cache rows start + offsets (in that order) to start, start+1, ... and drop every row after
    them; returns the new length start + len(offsets).

    Works on a cache with `layers` holding `keys` / `values` [batch, heads, length, head_dim] (transformers
    5.x DynamicCache) whose layers are all full-attention.
    """
    length = cache.get_seq_length()
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise AdaspecError(
            f"cannot compact a {type(cache).__name__} after a token tree: only full-attention "
            "DynamicCache layers (keys / values per layer) are supported"
        )
    k = offsets.shape[0]
    if k and not 0 <= int(offsets.min()) <= int(offsets.max()) < length - start:
        raise AdaspecError(f"cache rows {offsets.tolist()} after {start} are outside the {length - start} there")
    rows = offsets.to(torch.long) + start
    if k and not bool((rows == torch.arange(start, start + k, device=rows.device)).all()):
        for layer in layers:
            if layer.keys is None:  # an unused layer (KV sharing) holds nothing to move
                continue
            idx = rows.to(layer.keys.device)
            layer.keys[..., start : start + k, :] = layer.keys.index_select(-2, idx)
            layer.values[..., start : start + k, :] = layer.values.index_select(-2, idx)
    new_length = start + k
    if new_length < length:
        cache.crop(new_length - length)  # negative: tokens to remove (4.x and 5.x)
    return new_length
