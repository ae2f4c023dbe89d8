"""`LeanLM`: a supported transformers causal LM's inference forward over a preallocated KV cache, reading the model's
own weights (see adaspec.models.lean for the why), and `cached_lm`, which picks it or the transformers path."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM, PreTrainedModel

from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size
from adaspec.models.lean import gpt2, gpt_neox, llama
from adaspec.models.lean.cache import KVCache
from adaspec.models.lean.decoder import Decoder
from adaspec.models.lean.rotary import rotary_tables
from adaspec.models.target import FINAL, CachedLM, fit_vocab

# the supported classes: their family name and the family file's weights reader
_FAMILIES: dict[type, tuple[str, Callable[[PreTrainedModel], Decoder]]] = {
    LlamaForCausalLM: ("llama", llama.decoder),
    GPTNeoXForCausalLM: ("gpt_neox", gpt_neox.decoder),
    GPT2LMHeadModel: ("gpt2", gpt2.decoder),
}
# rope types whose inv_freq is fixed at init; "dynamic" and "longrope" change it with the sequence length
_STATIC_ROPE = ("default", "linear", "yarn", "llama3")
_FIRST_CAPACITY = 2048  # cache rows allocated up front when the context is longer; grown by doubling
_BAND_ROWS = 16  # chains of up to this many new tokens take their mask as a view of one precomputed band


def lean_supported(model: PreTrainedModel) -> str | None:
    """None when `LeanLM` reproduces `model`'s forward, else the reason it does not (one short phrase)."""
    if type(model) not in _FAMILIES:
        return f"{type(model).__name__} is not one of {', '.join(c.__name__ for c in _FAMILIES)}"
    family = _FAMILIES[type(model)][0]
    config = model.config
    if getattr(config, "sliding_window", None) or any(
        "sliding" in str(t) for t in (getattr(config, "layer_types", None) or ())
    ):
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
_TABLES: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, tuple[Tensor, ...]]] = weakref.WeakKeyDictionary()
_BANDS: dict[tuple, Tensor] = {}


def _band(capacity: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Chain masks as views (read-only, shared): row i, column t is 0 where t <= capacity + i, else -inf, so for
    T new tokens after s cached ones rows :T and columns capacity - s .. capacity + T - 1 are the causal mask."""
    key = (capacity, dtype, device)
    if key not in _BANDS:
        columns = torch.arange(2 * capacity, device=device)
        rows = torch.arange(_BAND_ROWS, device=device)[:, None] + capacity
        _BANDS[key] = torch.zeros(_BAND_ROWS, 2 * capacity, dtype=dtype, device=device).masked_fill_(
            columns > rows, float("-inf")
        )
    return _BANDS[key]


class LeanLM:
    """A supported HF causal LM's inference forward over a preallocated KV cache; `seen` tokens cached.

    Same surface as `adaspec.models.target.CachedLM` (forward / crop / seen), plus tree attention
    (`forward(positions=, tree_mask=)`) and `keep_path`. `max_length` caps the cache (default: the
    model's context for learned positions, unbounded growth for rotary models).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        vocab: int,
        name: str,
        hidden_layers: Sequence[int] = (),
        max_length: int | None = None,
    ):
        reason = lean_supported(model)
        if reason is not None:
            raise LeanUnsupported(name, reason)
        self.model, self.vocab, self.name, self.seen = model, vocab, name, 0
        self.family, read = _FAMILIES[type(model)]
        self.own_vocab = output_vocab_size(model)
        head = model.get_output_embeddings()
        self._head = (head.weight, head.bias)
        self.device, self.dtype = head.weight.device, head.weight.dtype
        decoder = read(model)
        self.heads, self.kv_heads, self.head_dim = decoder.heads, decoder.kv_heads, decoder.head_dim
        self._gqa = self.kv_heads != self.heads
        self._embed, self._positions, self._final_norm = decoder.embed, decoder.positions, decoder.final_norm
        self._rotary, self._rotary_rows = decoder.rotary, decoder.rotary_rows
        self._position_limit = None if decoder.positions is None else decoder.positions.shape[0]
        self._layers = list(decoder.layers)
        self.num_layers = len(self._layers)
        self.hidden_layers = tuple(int(i) for i in hidden_layers)
        for i in self.hidden_layers:
            if not (i == FINAL or 0 <= i < self.num_layers):
                raise AdaspecError(
                    f"hidden layer {i} is out of range for a {self.num_layers}-layer {name} model "
                    f"(use 0..{self.num_layers - 1}, or {FINAL} for the final normed state)"
                )
        self._capture = tuple(i in self.hidden_layers for i in range(self.num_layers))
        self._final_hidden = FINAL in self.hidden_layers
        # stack() order: forward captures depth order (layers ascending, then FINAL)
        depth = sorted(set(self.hidden_layers), key=lambda i: self.num_layers if i == FINAL else i)
        self._order = [depth.index(i) for i in self.hidden_layers]
        limits = [n for n in (max_length, self._position_limit) if n is not None]
        self._limit = min(limits) if limits else None
        self._no_onednn = self.device.type == "cpu" and self.dtype == torch.float32
        self.cache = KVCache(self.num_layers, self.kv_heads, self.head_dim, self.dtype, self.device)
        self._reserve(min(self._limit or _FIRST_CAPACITY, _FIRST_CAPACITY))

    # ---- cache and tables ----

    def _reserve(self, length: int) -> None:
        """Make room for `length` cached tokens (doubling), keeping the rows already cached."""
        if length <= self.cache.capacity:
            return
        if self._limit is not None and length > self._limit:
            raise AdaspecError(
                f"the {self.name} model's sequence would reach {length} tokens, beyond its {self._limit}-token limit"
            )
        capacity = max(length, 2 * self.cache.capacity)
        if self._limit is not None:
            capacity = min(capacity, self._limit)
        self.cache.grow(capacity, self.seen)
        self._arange = torch.arange(capacity, device=self.device)
        self._band = _band(capacity, self.dtype, self.device)
        if self._rotary is not None:
            self._rotary_tables(capacity)

    def _rotary_tables(self, capacity: int) -> None:
        """`adaspec.models.lean.rotary.rotary_tables` from the model's own inv_freq / attention_scaling, and the
        rows a layer multiplies per position (`Decoder.rotary_rows`). Built once per model, capacity and dtype
        (a new LeanLM per generate call would otherwise rebuild them)."""
        inv_freq = self._rotary.inv_freq
        # inv_freq is fixed for the supported rope types; a replaced buffer (model.to(...)) is a new key
        key = (capacity, self.dtype, self.device, self.head_dim, self.family, id(inv_freq), inv_freq.data_ptr())
        tables = _TABLES.setdefault(self._rotary, {})
        if key not in tables:
            cos, sin, perm = rotary_tables(
                inv_freq, self._rotary.attention_scaling, capacity, self.head_dim, self.dtype, self.device
            )
            tables[key] = (cos, sin, perm, *self._rotary_rows(cos, sin))
        self._cos, self._sin, self._perm, self._cos_rows, self._sin_rows = tables[key]

    def _run_layers(
        self, x: Tensor, cos: Tensor | None, sin: Tensor | None, s: int, e: int, mask: Tensor | None, causal: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """All decoder layers; also the outputs of the layers in `hidden_layers`, in depth order."""
        hidden = []
        for i, layer in enumerate(self._layers):
            x = layer.forward(self, i, x, cos, sin, s, e, mask, causal)
            if self._capture[i]:
                hidden.append(x)
        return x, hidden

    # ---- the CachedLM surface ----

    def forward(
        self, tokens: Tensor, keep: int = 1, positions: Tensor | None = None, tree_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
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

    def _forward(
        self, tokens: Tensor, keep: int, positions: Tensor | None, tree_mask: Tensor | None
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
                    raise AdaspecError(
                        f"position {int(positions.max())} is beyond the {self.name} model's "
                        f"{self._position_limit} learned positions"
                    )
                x = x + F.embedding(positions, self._positions)
        # one additive mask per forward, shared by the layers (a boolean one is converted in every SDPA call)
        causal, mask = False, None
        # one new token attends to every cached row, tree_mask or not: what this path has always done, though a
        # drafter's one-node tree round then sees the cached siblings its mask hides (a fix changes drafts)
        if tree_mask is not None and T > 1:
            mask = torch.zeros(T, e, dtype=self.dtype, device=self.device)
            # [T, seen + T]: every row given; [T, T]: the cached prefix is visible to all
            rows = mask if tree_mask.shape[-1] == e and e != T else mask[:, s:]
            rows.masked_fill_(~tree_mask.to(self.device), float("-inf"))
        elif T > 1:
            if s == 0:
                causal = True
            elif T <= _BAND_ROWS:  # new token i sees the prefix and new tokens 0..i: a view of the band
                capacity = self.cache.capacity
                mask = self._band[:T, capacity - s : capacity - s + e]
            else:
                mask = torch.zeros(T, e, dtype=self.dtype, device=self.device).masked_fill_(
                    self._arange[:e] > self._arange[s:e, None], float("-inf")
                )
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
        self.cache.keep(start, rows)
        self.seen = start + m


_NOTICED: set[tuple[str, str]] = set()
LEAN: dict[str, bool | None] = {"auto": None, "lean": True, "hf": False}  # --decode-path -> cached_lm(lean=)


def cached_lm(
    model: PreTrainedModel,
    vocab: int,
    name: str,
    hidden_layers: Sequence[int] = (),
    lean: bool | None = None,
    lean_type: type[LeanLM] = LeanLM,
) -> LeanLM | CachedLM:
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
