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

Files: ops.py (RMSNorm, rotation, attention: the maths the heads' lean layer and training modules share),
rotary.py (the tables), cache.py (the KV cache), decoder.py (what a family hands `LeanLM`), one file per
family with its typed per-layer weights and layer forward (llama.py, gpt_neox.py, gpt2.py), lm.py (`LeanLM`,
`cached_lm`), draft.py (`DraftLeanLM`, GPT-NeoX draft models' folded layer).
"""

from adaspec.models.lean.draft import DraftLeanLM
from adaspec.models.lean.lm import LEAN, LeanLM, LeanUnsupported, cached_lm, lean_supported

__all__ = ["LEAN", "DraftLeanLM", "LeanLM", "LeanUnsupported", "cached_lm", "lean_supported"]
