"""A lean inference forward for Llama, GPT-NeoX and GPT-2 that reads the HF model's own weights.

The HF model stays the single source of truth: `LeanLM` holds references to its parameters (no copies, so
training or `load_state_dict` is seen at once) and re-implements only the inference forward, gpt-fast
style: one preallocated KV cache [layers, 2, kv_heads, capacity, head_dim], rotary tables computed once
from the model's own `inv_freq` / `attention_scaling`, `F.scaled_dot_product_attention`, hidden states kept
2-D [tokens, H] (batch 1), no per-layer dicts, masks or cache objects. On small models most of a HF decode
forward is per-call framework work (issue 17), which this removes. Per call it also avoids what is still
per-call overhead at these sizes: one additive chain mask as a view of a band built once, rotary tables and
bands shared by every LeanLM of a model (a generate call wraps the model anew), GPT-NeoX's q and k rotated
and its keys and values cached by one op each, and oneDNN off around float32 CPU forwards (its GELU).

Numerics follow transformers 5.24's modeling files op for op where it matters (RMSNorm in float32 then
cast, rotary `q*cos + rotate_half(q)*sin` with the tables cast to the model dtype, GPT-NeoX's per-head
[q|k|v] layout, GPT-2's Conv1D [in, out] weights, learned positions); attention goes through SDPA as
HF's default `sdpa` implementation does. Tests compare logits and hidden states against the HF model.

Tree-ready: `forward(..., positions=, tree_mask=)` feeds m new tokens that see the whole cached prefix
plus the new tokens `tree_mask` allows; `keep_path` then moves the kept tokens' cache rows into place.
`cached_lm` picks this path when `lean_supported(model)` is None and falls back to the HF path otherwise.
"""

from __future__ import annotations

import sys
import weakref
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, PreTrainedModel
from transformers.activations import GELUActivation, SiLUActivation

from adaspec.models.target import FINAL, CachedLM, fit_vocab
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size

_FAMILIES = {LlamaForCausalLM: "llama", GPTNeoXForCausalLM: "gpt_neox", GPT2LMHeadModel: "gpt2"}
# rope types whose inv_freq is fixed at init; "dynamic" and "longrope" change it with the sequence length
_STATIC_ROPE = ("default", "linear", "yarn", "llama3")
_FIRST_CAPACITY = 2048  # cache rows allocated up front when the context is longer; grown by doubling
_BAND_ROWS = 16  # chains of up to this many new tokens take their mask as a view of one precomputed band


def lean_supported(model: PreTrainedModel) -> str | None:
    """None when `LeanLM` reproduces `model`'s forward, else the reason it does not (one short phrase)."""
    family = _FAMILIES.get(type(model))
    if family is None:
        return f"{type(model).__name__} is not one of {', '.join(c.__name__ for c in _FAMILIES)}"
    config = model.config
    if getattr(config, "sliding_window", None) or any(
            "sliding" in str(t) for t in (getattr(config, "layer_types", None) or ())):
        return "sliding-window attention"
    if getattr(model, "hf_quantizer", None) is not None or getattr(config, "quantization_config", None):
        return "quantized weights"
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1 or torch.device("meta") in devices:
        return "weights spread over several devices or not materialised"
    if family in ("llama", "gpt_neox"):
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type not in _STATIC_ROPE:
            return f"rope type {rope_type!r} (supported: {', '.join(_STATIC_ROPE)})"
    if family == "gpt2":
        if config.add_cross_attention:
            return "GPT-2 cross-attention"
        if config.reorder_and_upcast_attn and config._attn_implementation == "eager":
            return "GPT-2 reorder_and_upcast_attn (eager attention upcasts to float32)"
    return None


class LeanUnsupported(AdaspecError):
    """The model's forward is not one `LeanLM` reproduces; `reason` says why (one short phrase)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"the {name} model cannot use the lean decode path: {reason}")
        self.reason = reason


# built once, read-only, shared by every LeanLM: rotary tables per rotary module, chain-mask bands per size
_TABLES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, tuple[Tensor, ...]]]" = (
    weakref.WeakKeyDictionary())
_BANDS: dict[tuple, Tensor] = {}


def _band(capacity: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Chain masks as views (read-only, shared): row i, column t is 0 where t <= capacity + i, else -inf, so for
    T new tokens after s cached ones rows :T and columns capacity - s .. capacity + T - 1 are the causal mask."""
    key = (capacity, dtype, device)
    if key not in _BANDS:
        columns = torch.arange(2 * capacity, device=device)
        rows = torch.arange(_BAND_ROWS, device=device)[:, None] + capacity
        _BANDS[key] = torch.zeros(_BAND_ROWS, 2 * capacity, dtype=dtype, device=device).masked_fill_(
            columns > rows, float("-inf"))
    return _BANDS[key]


def _activation(module: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """The function behind an HF activation module; the module itself when no plain equivalent is known."""
    if isinstance(module, GELUActivation):
        return module.act
    if isinstance(module, (SiLUActivation, torch.nn.SiLU)):
        return F.silu
    return module


class LeanLM:
    """A supported HF causal LM's inference forward over a preallocated KV cache; `seen` tokens cached.

    Same surface as `adaspec.models.target.CachedLM` (forward / crop / seen), plus tree attention
    (`forward(positions=, tree_mask=)`) and `keep_path`. `max_length` caps the cache (default: the
    model's context for learned positions, unbounded growth for rotary models).
    """

    def __init__(self, model: PreTrainedModel, vocab: int, name: str, hidden_layers: Sequence[int] = (),
                 max_length: int | None = None):
        reason = lean_supported(model)
        if reason is not None:
            raise LeanUnsupported(name, reason)
        self.model, self.vocab, self.name, self.seen = model, vocab, name, 0
        self.family = _FAMILIES[type(model)]
        config = model.config
        self.own_vocab = output_vocab_size(model)
        head = model.get_output_embeddings()
        self._head = (head.weight, head.bias)
        weight = head.weight
        self.device, self.dtype = weight.device, weight.dtype
        getattr(self, f"_init_{self.family}")(model, config)
        self.num_layers = len(self._layers)
        self.hidden_layers = tuple(int(i) for i in hidden_layers)
        for i in self.hidden_layers:
            if not (i == FINAL or 0 <= i < self.num_layers):
                raise AdaspecError(f"hidden layer {i} is out of range for a {self.num_layers}-layer {name} model "
                                   f"(use 0..{self.num_layers - 1}, or {FINAL} for the final normed state)")
        self._capture = tuple(i in self.hidden_layers for i in range(self.num_layers))
        self._final_hidden = FINAL in self.hidden_layers
        # stack() order: forward captures depth order (layers ascending, then FINAL)
        depth = sorted(set(self.hidden_layers), key=lambda i: self.num_layers if i == FINAL else i)
        self._order = [depth.index(i) for i in self.hidden_layers]
        limits = [n for n in (max_length, self._position_limit) if n is not None]
        self._limit = min(limits) if limits else None
        self._no_onednn = self.device.type == "cpu" and self.dtype == torch.float32
        self._capacity = 0
        self._reserve(min(self._limit or _FIRST_CAPACITY, _FIRST_CAPACITY))

    # ---- weights (references to the HF parameters) ----

    def _init_llama(self, model: LlamaForCausalLM, config) -> None:
        inner = model.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self._embed, self._positions = inner.embed_tokens.weight, None
        self._norm = (inner.norm.weight, None, inner.norm.variance_epsilon)
        self._layers = [(
            layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
            layer.self_attn.q_proj.weight, layer.self_attn.q_proj.bias,
            layer.self_attn.k_proj.weight, layer.self_attn.k_proj.bias,
            layer.self_attn.v_proj.weight, layer.self_attn.v_proj.bias,
            layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias, layer.self_attn.scaling,
            layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
            layer.mlp.gate_proj.weight, layer.mlp.gate_proj.bias, layer.mlp.up_proj.weight,
            layer.mlp.up_proj.bias, layer.mlp.down_proj.weight, layer.mlp.down_proj.bias,
            _activation(layer.mlp.act_fn)) for layer in inner.layers[: config.num_hidden_layers]]
        self._rotary = inner.rotary_emb
        self._position_limit = None
        self._block = self._llama_block

    def _init_gpt_neox(self, model: GPTNeoXForCausalLM, config) -> None:
        inner = model.gpt_neox
        self.heads = self.kv_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self._embed, self._positions = inner.embed_in.weight, None
        norm = inner.final_layer_norm
        self._norm = (norm.weight, norm.bias, norm.eps)
        self._layers = [(
            layer.input_layernorm.weight, layer.input_layernorm.bias, layer.input_layernorm.eps,
            layer.attention.query_key_value.weight, layer.attention.query_key_value.bias,
            layer.attention.dense.weight, layer.attention.dense.bias, layer.attention.scaling,
            layer.post_attention_layernorm.weight, layer.post_attention_layernorm.bias,
            layer.post_attention_layernorm.eps,
            layer.mlp.dense_h_to_4h.weight, layer.mlp.dense_h_to_4h.bias,
            layer.mlp.dense_4h_to_h.weight, layer.mlp.dense_4h_to_h.bias, _activation(layer.mlp.act),
            layer.use_parallel_residual) for layer in inner.layers]
        self._rotary = inner.rotary_emb
        self._position_limit = None
        self._block = self._neox_block

    def _init_gpt2(self, model: GPT2LMHeadModel, config) -> None:
        inner = model.transformer
        self.heads = self.kv_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self._embed, self._positions = inner.wte.weight, inner.wpe.weight
        self._norm = (inner.ln_f.weight, inner.ln_f.bias, inner.ln_f.eps)
        # Conv1D keeps weights as [in, out]: torch.addmm(bias, x, weight) is exactly its forward
        self._layers = [(
            block.ln_1.weight, block.ln_1.bias, block.ln_1.eps,
            block.attn.c_attn.weight, block.attn.c_attn.bias, block.attn.c_proj.weight, block.attn.c_proj.bias,
            block.attn.scaling, block.ln_2.weight, block.ln_2.bias, block.ln_2.eps,
            block.mlp.c_fc.weight, block.mlp.c_fc.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias,
            _activation(block.mlp.act)) for block in inner.h]
        self._rotary = None
        self._position_limit = int(config.n_positions)
        self._block = self._gpt2_block

    # ---- cache and tables ----

    def _reserve(self, length: int) -> None:
        """Make room for `length` cached tokens (doubling), keeping the rows already cached."""
        if length <= self._capacity:
            return
        if self._limit is not None and length > self._limit:
            raise AdaspecError(f"the {self.name} model's sequence would reach {length} tokens, beyond its "
                               f"{self._limit}-token limit")
        capacity = max(length, 2 * self._capacity)
        if self._limit is not None:
            capacity = min(capacity, self._limit)
        # uninitialised: attention reads rows :e only, all written by then (zeroing cost a memset per sequence)
        cache = torch.empty(self.num_layers, 2, self.kv_heads, capacity, self.head_dim, dtype=self.dtype,
                            device=self.device)
        if self._capacity:
            cache[:, :, :, : self.seen] = self._cache[:, :, :, : self.seen]
        self._cache, self._capacity = cache, capacity
        self._kv = [cache[i] for i in range(self.num_layers)]  # [2, kv_heads, capacity, hd]: one copy_ per layer
        self._keys = [kv[0] for kv in self._kv]
        self._values = [kv[1] for kv in self._kv]
        self._keys4 = [k[None] for k in self._keys]  # [1, kv_heads, capacity, hd]: SDPA's batch of one
        self._values4 = [v[None] for v in self._values]
        self._arange = torch.arange(capacity, device=self.device)
        self._band = _band(capacity, self.dtype, self.device)
        if self._rotary is not None:
            self._rotary_tables(capacity)

    def _rotary_tables(self, capacity: int) -> None:
        """cos/sin over all positions as HF computes them (float32, cast to the model dtype), widened to the
        head dim so partial rotary needs no split: rotate_half becomes a gather `_perm` with its sign folded
        into `_sin`, and dims past the rotary ones get cos 1, sin 0 (x*1 + y*0 == x exactly). Built once per
        model, capacity and dtype (a new LeanLM per generate call would otherwise rebuild them)."""
        inv_freq = self._rotary.inv_freq
        # inv_freq is fixed for the supported rope types; a replaced buffer (model.to(...)) is a new key
        key = (capacity, self.dtype, self.device, self.head_dim, self.family, id(inv_freq), inv_freq.data_ptr())
        tables = _TABLES.setdefault(self._rotary, {})
        if key not in tables:
            tables[key] = self._build_rotary_tables(capacity)
        self._cos, self._sin, self._perm, self._cos_rows, self._sin_rows = tables[key]

    def _build_rotary_tables(self, capacity: int) -> tuple[Tensor, ...]:
        inv_freq = self._rotary.inv_freq.to(device=self.device, dtype=torch.float32)
        scaling = self._rotary.attention_scaling
        freqs = torch.arange(capacity, device=self.device, dtype=torch.float32)[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = (emb.cos() * scaling).to(self.dtype), (emb.sin() * scaling).to(self.dtype)
        rot, half = emb.shape[-1], emb.shape[-1] // 2
        wide_cos = torch.ones(capacity, self.head_dim, dtype=self.dtype, device=self.device)
        wide_sin = torch.zeros(capacity, self.head_dim, dtype=self.dtype, device=self.device)
        wide_cos[:, :rot] = cos
        wide_sin[:, :half] = -sin[:, :half]
        wide_sin[:, half:rot] = sin[:, half:]
        perm = torch.cat([torch.arange(half, rot), torch.arange(half), torch.arange(rot, self.head_dim)]
                         ).to(self.device)
        # what a block multiplies per position: [capacity, 1, hd] (Llama: q and k concatenated on heads), or for
        # GPT-NeoX's per-head [q | k | v] [capacity, 1, 3, hd] where v gets cos 1, sin 0 (one rotation for all)
        if self.family == "gpt_neox":
            one, zero = torch.ones_like(wide_cos), torch.zeros_like(wide_sin)
            rows = (torch.stack([wide_cos, wide_cos, one], dim=1)[:, None],
                    torch.stack([wide_sin, wide_sin, zero], dim=1)[:, None])
        else:
            rows = wide_cos[:, None], wide_sin[:, None]
        return wide_cos, wide_sin, perm, *rows

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """HF's `x*cos + rotate_half(x)*sin` on the rotary dims of x [T, heads, head_dim]; cos/sin [T, 1, hd]."""
        return torch.addcmul(x * cos, x.index_select(-1, self._perm), sin)

    # ---- blocks: x [T, H] -> [T, H]; the new keys/values go to cache rows s:e ----

    def _attend(self, layer: int, q: Tensor, s: int, e: int, mask: Tensor | None, causal: bool,
                scale: float) -> Tensor:
        """SDPA of q [T, heads, hd] over cache rows :e (the new keys/values already written at s:e) -> [T, H].
        4-D inputs: with 3-D ones SDPA takes its slower math path on the CPU instead of the flash kernel."""
        keys, values, gqa = self._keys4[layer][:, :, :e], self._values4[layer][:, :, :e], self.kv_heads != self.heads
        if q.shape[0] == 1:  # one new token: its axis is SDPA's batch of one, so no transposes
            out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, scale=scale, enable_gqa=gqa)
            return out.reshape(1, -1)
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys, values, attn_mask=mask,
                                             is_causal=causal, scale=scale, enable_gqa=gqa)
        return out[0].transpose(0, 1).reshape(q.shape[0], -1)

    def _rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    def _llama_block(self, layer: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int,
                     mask: Tensor | None, causal: bool) -> Tensor:
        (n1, eps1, wq, bq, wk, bk, wv, bv, wo, bo, scale, n2, eps2, wg, bg, wu, bu, wd, bd,
         act) = self._layers[layer]
        T = x.shape[0]
        h = self._rms_norm(x, n1, eps1)
        q = F.linear(h, wq, bq).view(T, self.heads, self.head_dim)
        k = F.linear(h, wk, bk).view(T, self.kv_heads, self.head_dim)
        v = F.linear(h, wv, bv).view(T, self.kv_heads, self.head_dim)
        qk = self._rotate(torch.cat((q, k), dim=1), cos, sin)
        kv = self._kv[layer][:, :, s:e]
        kv[0].copy_(qk[:, self.heads:].transpose(0, 1))
        kv[1].copy_(v.transpose(0, 1))
        a = self._attend(layer, qk[:, : self.heads], s, e, mask, causal, scale)
        x = x + F.linear(a, wo, bo)
        h = self._rms_norm(x, n2, eps2)
        return x + F.linear(act(F.linear(h, wg, bg)) * F.linear(h, wu, bu), wd, bd)

    def _neox_block(self, layer: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int,
                    mask: Tensor | None, causal: bool) -> Tensor:
        (n1, b1, eps1, wqkv, bqkv, wo, bo, scale, n2, b2, eps2, wi, bi, wd, bd, act,
         parallel) = self._layers[layer]
        T, H, hd = x.shape[0], x.shape[1], self.head_dim
        # per head the projection is [q | k | v] (HF: view(T, heads, 3 * hd).chunk(3, -1)); the [q|k|v] tables
        # rotate q and k and leave v as it is
        qkv = self._rotate(F.linear(F.layer_norm(x, (H,), n1, b1, eps1), wqkv, bqkv).view(T, self.heads, 3, hd),
                           cos, sin)
        self._kv[layer][:, :, s:e].copy_(qkv[:, :, 1:].permute(2, 1, 0, 3))
        a = F.linear(self._attend(layer, qkv[:, :, 0], s, e, mask, causal, scale), wo, bo)
        if parallel:
            return F.linear(act(F.linear(F.layer_norm(x, (H,), n2, b2, eps2), wi, bi)), wd, bd) + a + x
        a = a + x
        return F.linear(act(F.linear(F.layer_norm(a, (H,), n2, b2, eps2), wi, bi)), wd, bd) + a

    def _gpt2_block(self, layer: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int,
                    mask: Tensor | None, causal: bool) -> Tensor:
        n1, b1, eps1, wqkv, bqkv, wo, bo, scale, n2, b2, eps2, wi, bi, wd, bd, act = self._layers[layer]
        T, H = x.shape
        qkv = torch.addmm(bqkv, F.layer_norm(x, (H,), n1, b1, eps1), wqkv).view(T, 3, self.heads, self.head_dim)
        self._kv[layer][:, :, s:e].copy_(qkv[:, 1:].permute(1, 2, 0, 3))
        x = torch.addmm(bo, self._attend(layer, qkv[:, 0], s, e, mask, causal, scale), wo) + x
        h = torch.addmm(bi, F.layer_norm(x, (H,), n2, b2, eps2), wi)
        return x + torch.addmm(bd, act(h), wd)

    def _run_layers(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, s: int, e: int,
                    mask: Tensor | None, causal: bool) -> tuple[Tensor, list[Tensor]]:
        """All decoder layers; also the outputs of the layers in `hidden_layers`, in depth order."""
        hidden = []
        for layer in range(self.num_layers):
            x = self._block(layer, x, cos, sin, s, e, mask, causal)
            if self._capture[layer]:
                hidden.append(x)
        return x, hidden

    def _final_norm(self, x: Tensor) -> Tensor:
        weight, bias, eps = self._norm
        if self.family == "llama":
            return self._rms_norm(x, weight, eps)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    # ---- the CachedLM surface ----

    def forward(self, tokens: Tensor, keep: int = 1, positions: Tensor | None = None,
                tree_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Feed 1-D `tokens` after the `seen` cached ones (cache rows seen..seen+T-1).

        Returns float32 logits of the last `keep` positions [keep, vocab] and the hidden states of
        `hidden_layers` at all T positions [len(hidden_layers), T, H] (None when no layers were asked).
        `positions` [T] (default seen..seen+T-1) are the position ids; `tree_mask` [T, T] bool says which
        new tokens each new token attends to (the cached prefix is always visible; default causal), or
        [T, seen + T] which cache rows and new tokens (a drafter's tree rounds hide the cached siblings).

        On a float32 CPU model oneDNN is switched off for the call (and restored after): its GELU costs
        ~6 µs of primitive setup per call, several times the kernel at decode sizes, while float32 matmuls
        go to MKL either way. The switch is process-wide, so other threads' oneDNN ops see it meanwhile.
        """
        if not torch.is_inference_mode_enabled():  # the decoding loops enter it once, not per forward
            with torch.inference_mode():
                return self.forward(tokens, keep, positions, tree_mask)
        if not self._no_onednn:
            return self._forward(tokens, keep, positions, tree_mask)
        onednn = torch._C._get_mkldnn_enabled()  # what torch.backends.mkldnn.enabled reads, minus its wrapper
        torch._C._set_mkldnn_enabled(False)
        try:
            return self._forward(tokens, keep, positions, tree_mask)
        finally:
            torch._C._set_mkldnn_enabled(onednn)

    def _forward(self, tokens: Tensor, keep: int, positions: Tensor | None, tree_mask: Tensor | None
                 ) -> tuple[Tensor, Tensor | None]:
        if tokens.device != self.device:
            tokens = tokens.to(self.device)
        s, T = self.seen, tokens.shape[0]
        e = s + T
        self._reserve(e)
        x, cos, sin = F.embedding(tokens, self._embed), None, None
        if positions is None:  # a chain: slices of the tables, no gather
            if self._rotary is not None:
                cos, sin = self._cos_rows[s:e], self._sin_rows[s:e]
            if self._positions is not None:
                x = x + self._positions[s:e]
        else:
            positions = positions.to(self.device)
            if self._rotary is not None:
                cos, sin = self._cos_rows[positions], self._sin_rows[positions]
            if self._positions is not None:
                if int(positions.max()) >= self._position_limit:
                    raise AdaspecError(f"position {int(positions.max())} is beyond the {self.name} model's "
                                       f"{self._position_limit} learned positions")
                x = x + F.embedding(positions, self._positions)
        # one additive mask per forward, shared by the layers (a boolean one is converted in every SDPA call)
        causal, mask = False, None
        if tree_mask is not None:
            mask = torch.zeros(T, e, dtype=self.dtype, device=self.device)
            # [T, seen + T]: every row given; [T, T]: the cached prefix is visible to all
            rows = mask if tree_mask.shape[-1] == e and e != T else mask[:, s:]
            rows.masked_fill_(~tree_mask.to(self.device), float("-inf"))
        elif T > 1:
            if s == 0:
                causal = True
            elif T <= _BAND_ROWS:  # new token i sees the prefix and new tokens 0..i: a view of the band
                mask = self._band[:T, self._capacity - s: self._capacity - s + e]
            else:
                mask = torch.zeros(T, e, dtype=self.dtype, device=self.device).masked_fill_(
                    self._arange[:e] > self._arange[s:e, None], float("-inf"))
        x, hidden = self._run_layers(x, cos, sin, s, e, mask, causal)
        self.seen = e
        if self._final_hidden:
            x = self._final_norm(x)
            hidden.append(x)
            last = x[-keep:] if keep < T else x
        else:
            last = self._final_norm(x[-keep:] if keep < T else x)
        weight, bias = self._head
        logits = F.linear(last, weight, bias)
        if logits.dtype != torch.float32:
            logits = logits.float()
        if self.own_vocab != self.vocab:
            logits = fit_vocab(logits, self.vocab)
        if not self.hidden_layers:
            return logits, None
        return logits, torch.stack([hidden[j] for j in self._order])

    def crop(self, length: int) -> None:
        """Roll the cache back to its first `length` tokens (rows past `seen` are simply overwritten)."""
        if length < self.seen:
            self.seen = max(int(length), 0)

    @torch.inference_mode()
    def keep_path(self, start: int, indices: Sequence[int] | Tensor) -> None:
        """Keep, after the first `start` cached tokens, the new tokens at offsets `indices` (relative to
        `start`, in path order): their cache rows move to start, start+1, ...; seen = start + len(indices).
        The keys were computed at the positions given to `forward`, so nothing is recomputed."""
        if not isinstance(indices, Tensor):
            indices = list(indices)
            if any(not 0 <= i < self.seen - start for i in indices):
                raise AdaspecError(f"keep_path offsets {indices} are outside the {self.seen - start} new tokens")
            indices = torch.tensor(indices, dtype=torch.long)
        rows = indices.to(self.device) + start
        m = rows.shape[0]
        self._cache[:, :, :, start:start + m] = self._cache.index_select(3, rows)
        self.seen = start + m


_NOTICED: set[tuple[str, str]] = set()
LEAN: dict[str, bool | None] = {"auto": None, "lean": True, "hf": False}  # --decode-path -> cached_lm(lean=)


def cached_lm(model: PreTrainedModel, vocab: int, name: str, hidden_layers: Sequence[int] = (),
              lean: bool | None = None, lean_type: type[LeanLM] = LeanLM) -> LeanLM | CachedLM:
    """The model with its KV cache: `lean_type` (LeanLM or a subclass) when supported (lean=None:
    automatically; True: required, AdaspecError otherwise), else the HF path with a one-line notice on
    stderr naming the reason."""
    if lean is not False:
        try:
            return lean_type(model, vocab, name, hidden_layers)
        except LeanUnsupported as exc:
            if lean is True:
                raise
            if (name, exc.reason) not in _NOTICED:  # once per model role and reason, not per call
                _NOTICED.add((name, exc.reason))
                print(f"adaspec: {name} model on the transformers decode path ({exc.reason})", file=sys.stderr)
    return CachedLM(model, vocab, name, tuple(hidden_layers))
