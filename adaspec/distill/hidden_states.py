"""The target's hidden states in the teacher cache (`adaspec cache --hidden-layers`), read by
`adaspec train-head --teacher-cache` so a head trains with no target forward.

Layers are named as the heads name them (adaspec.models.target ids): "eagle3" is the EAGLE-3 default
for this target (`drafters.eagle.default_aux_layers`, what `train-head --kind eagle` reads without
--aux-layers), "final" the final normed state (`FINAL`: EAGLE-1, MTP and Medusa), or explicit ids;
comma-separated, kept in order, duplicates dropped ("eagle3,final" serves every head kind).

Every token of every example is stored, prompt included: the heads attend over the whole sequence. The
states are fp16, so the cache holds positions x layers x hidden size x 2 bytes; `hidden_settings` states
that estimate and refuses it over the --max-hidden-gb budget before any target weight is loaded.
"""

from __future__ import annotations

import os

from adaspec.data import Item
from adaspec.errors import AdaspecError
from adaspec.models.target import FINAL, check_layer_ids, config_dims, default_aux_layers

NAMED = {"eagle3": default_aux_layers, "final": lambda num_layers: (FINAL,)}
BYTES = 2  # fp16


def hidden_layer_ids(spec: str, num_layers: int) -> tuple[int, ...]:
    """The layer ids `spec` names for an L-layer target (see the module docstring)."""
    out: list[int] = []
    for word in (w.strip() for w in spec.split(",")):
        if word in NAMED:
            ids = tuple(NAMED[word](num_layers))
        else:
            try:
                ids = (int(word),)
            except ValueError:
                raise AdaspecError(
                    f"--hidden-layers takes {', '.join(NAMED)} or layer ids, comma-separated; got {word!r}"
                ) from None
        out += [i for i in dict.fromkeys(ids) if i not in out]
    check_layer_ids(tuple(out), num_layers)
    return tuple(out)


def hidden_bytes(items: list[Item], layers: int, hidden_size: int) -> int:
    """Bytes of the cached hidden states of `items`: every token, `layers` states of `hidden_size`, fp16."""
    return sum(len(it["input_ids"]) for it in items) * layers * hidden_size * BYTES


def hidden_settings(spec: str, target: str | os.PathLike, items: list[Item], max_gb: float) -> dict:
    """The manifest's "hidden" entry for these layers of `target` over `items`, read from the target's
    config alone; refuses, with the size estimate, a cache that would exceed `max_gb`."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(target))
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"could not read the config of target {target}: {str(exc).splitlines()[0]}") from None
    num_layers, size = config_dims(config)
    layers = hidden_layer_ids(spec, num_layers)
    positions = sum(len(it["input_ids"]) for it in items)
    total = hidden_bytes(items, len(layers), size)
    if total > max_gb * 1e9:
        raise AdaspecError(
            f"--hidden-layers {spec}: {len(items):,} examples ({positions:,} token positions) x "
            f"{len(layers)} layers x {size} hidden x {BYTES} bytes = {total / 1e9:.2f} GB, over "
            f"--max-hidden-gb {max_gb:g}; cache fewer layers or examples (--limit, --max-length), "
            f"or raise --max-hidden-gb"
        )
    return {"layers": list(layers), "size": size, "dtype": "float16", "positions": positions}
