"""The teacher cache's on-disk format: one declared shard schema, shard files, and the reader.

Layout: DIR/manifest.json plus DIR/shard-NNNNN.safetensors, one shard per `shard_size` examples. A shard
holds one row per RESPONSE token of its examples (the shifted positions t with labels[t+1] ignored by
no one, where the logits at t predict token t+1), back to back: the per-row arrays of `ROW_ARRAYS`
(declared once below; adding a per-token field is one entry there), `positions` int32 [R] (the shifted
position of each row in its item) and `row_offsets` int64 [n + 1] (item i's rows are
row_offsets[i]:row_offsets[i+1]). Arrays declared `per="position"` (the target's hidden states, when the
cache was built with --hidden-layers) hold one row per token of every example instead, prompt included,
indexed by `position_offsets` int64 [n + 1]. The manifest records model fingerprints, the tokenizer's
vocabulary hash, a fingerprint of the encoded items (every item's input_ids and labels), K, the divergence
(the quantity `ref_div` holds: the reference's per-token divergence in it), temperature, beta, the data
settings and, with hidden states, their layers, width and dtype; `TeacherCache.open` refuses a cache whose
fingerprints or settings differ from the run's, and one whose L_ref is in another divergence than the run's
Δ. Shards are memory-mapped when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.models import load_tokenizer, model_fingerprint

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:05d}.safetensors"
_DTYPES = {"I32": np.int32, "I64": np.int64, "F32": np.float32, "F16": np.float16}


@dataclass(frozen=True)
class RowArray:
    """One array of a shard: a row per response token (the default) or per token position."""

    dtype: type  # stored dtype
    batch_dtype: torch.dtype  # dtype of the tensor `TeacherCache.batch` / `.hidden` returns
    width: Callable[[dict], tuple[int, ...]]  # trailing shape per row, from the manifest's settings
    present: Callable[[dict], bool] = lambda manifest: True
    per: Literal["response", "position"] = "response"


def _has_hidden(m: dict) -> bool:
    return m.get("hidden") is not None


ROW_ARRAYS: dict[str, RowArray] = {
    "topk_ids": RowArray(np.int32, torch.int64, lambda m: (int(m["top_k"]),)),
    "topk_logprobs": RowArray(np.float32, torch.float32, lambda m: (int(m["top_k"]),)),
    "ref_div": RowArray(np.float32, torch.float32, lambda m: (), lambda m: m["ref"] is not None),
    # the target's hidden states [layers, H] of every token (adaspec.distill.hidden_states)
    "hidden": RowArray(
        np.float16,
        torch.float32,
        lambda m: (len(m["hidden"]["layers"]), int(m["hidden"]["size"])),
        _has_hidden,
        per="position",
    ),
}
INDEX_ARRAYS = {"response": ("positions", "row_offsets"), "position": ("position_offsets",)}
OFFSETS = {"response": "row_offsets", "position": "position_offsets"}  # item i's rows: offsets[i]:offsets[i+1]


def row_arrays(settings: dict, per: str = "response") -> dict[str, RowArray]:
    """The arrays with a row per `per` (response token or token position) a cache with these settings stores."""
    return {name: spec for name, spec in ROW_ARRAYS.items() if spec.per == per and spec.present(settings)}


# ------------------------------------------------------------------------------------------ fingerprints


def items_fingerprint(items: list[data_lib.Item]) -> str:
    """Hash of every encoded item's input_ids and labels, in order: the exact token data a cache covers."""
    h = hashlib.sha256(str(len(items)).encode())
    for it in items:
        ids = np.asarray(it["input_ids"], dtype=np.int64)
        labels = np.asarray(it["labels"], dtype=np.int64)
        h.update(struct.pack("<q", len(ids)))
        h.update(ids.tobytes())
        h.update(labels.tobytes())
    return h.hexdigest()[:16]


def vocab_fingerprint(tokenizer: Any) -> str:
    """Hash of a tokenizer's token -> id mapping."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def response_positions(labels: list[int]) -> np.ndarray:
    """Shifted positions t whose logits predict a response token (`data.response_mask` of one item)."""
    return np.nonzero(data_lib.response_mask(torch.as_tensor(labels)).numpy())[0].astype(np.int32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ shard files


def read_shard(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-mapped arrays and metadata of a safetensors shard; AdaspecError if it is not a whole one."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(fh.read(n))
        meta = header.pop("__metadata__", {}) or {}
        raw = np.memmap(path, dtype=np.uint8, mode="r") if size > 8 + n else np.zeros(0, np.uint8)
        arrays, end = {}, 0
        for name, info in header.items():
            start, stop = info["data_offsets"]
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            if stop - start != int(np.prod(shape)) * dtype.itemsize or 8 + n + stop > size:
                raise ValueError(f"tensor {name} is truncated")
            arrays[name] = raw[8 + n + start : 8 + n + stop].view(dtype).reshape(shape)
            end = max(end, stop)
        if 8 + n + end != size:
            raise ValueError(f"file has {size} bytes, its header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, struct.error) as exc:
        raise AdaspecError(f"corrupt cache shard {path}: {exc}") from None
    return arrays, meta


def check_shard(
    arrays: dict[str, np.ndarray],
    meta: dict[str, str],
    path: Path,
    settings: dict,
    first: int,
    count: int,
    rows: int | None = None,
    positions: int | None = None,
) -> None:
    """Raise AdaspecError unless the shard is the one expected at this place of a cache with `settings`."""

    def bad(why: str) -> AdaspecError:
        return AdaspecError(f"corrupt cache shard {path}: {why}; delete it and rerun `adaspec cache` to redo it")

    if meta.get("cache_key") != settings["cache_key"]:
        raise bad("it was written for other settings")
    if (int(meta.get("first", -1)), int(meta.get("count", -1))) != (first, count):
        raise bad(f"it holds examples {meta.get('first')}+{meta.get('count')}, expected {first}+{count}")
    _check_rows(bad, arrays, settings, "response", count, rows)
    _check_rows(bad, arrays, settings, "position", count, positions)


def _check_rows(
    bad: Callable[[str], AdaspecError],
    arrays: dict[str, np.ndarray],
    settings: dict,
    per: str,
    count: int,
    expected: int | None,
) -> None:
    specs = row_arrays(settings, per)
    if not specs and per == "position":
        return
    offsets_name = OFFSETS[per]
    missing = [n for n in [*specs, *INDEX_ARRAYS[per]] if n not in arrays]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    offsets = arrays[offsets_name]
    if offsets.shape != (count + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise bad(f"{offsets_name} are inconsistent")
    n_rows = arrays["positions"].shape[0] if per == "response" else int(offsets[-1])
    if offsets[-1] != n_rows:
        raise bad(f"{offsets_name} are inconsistent")
    for name, spec in specs.items():
        if arrays[name].shape != (n_rows, *spec.width(settings)):
            raise bad(
                f"{name} is {list(arrays[name].shape)}, not [{n_rows}, {', '.join(map(str, spec.width(settings)))}]"
            )
    if expected is not None and expected != n_rows:
        raise bad(f"it has {n_rows} {'rows' if per == 'response' else 'positions'}, expected {expected}")


def write_shard(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half-written shard is left behind
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ reading


class TeacherCache:
    """A finished cache, memory-mapped; `batch` lays its rows out like the training batch's logits, `hidden`
    its hidden states like the target's features."""

    def __init__(self, path: Path, manifest: dict, shards: list[dict[str, np.ndarray]]) -> None:
        self.path = path
        self.manifest = manifest
        self.top_k: int = int(manifest["top_k"])
        self.has_ref: bool = manifest["ref"] is not None
        self.vocab_size: int = int(manifest["vocab_size"])
        self.n_items: int = int(manifest["data"]["n_items"])
        hidden = manifest.get("hidden")
        self.hidden_layers: tuple[int, ...] | None = tuple(hidden["layers"]) if hidden else None
        self._shards = shards
        # per item: (shard, first row, end row) of its response rows, and of its positions
        self._where = {per: _item_rows(shards, OFFSETS[per]) for per in ("response", "position")[: 1 + bool(hidden)]}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        target_path: str | os.PathLike,
        ref_path: str | os.PathLike | None,
        items: list[data_lib.Item],
        divergence: str | None,
        temperature: float | None,
        beta: float | None = None,
        vocab: int | None = None,
        top_k: int | None = None,
        hidden_layers: tuple[int, ...] | None = None,
        hidden_size: int | None = None,
        verify: bool = True,
    ) -> TeacherCache:
        """Open the cache at `path` for a run on `items` with this target (and reference), or refuse.

        Refuses, with one line naming the difference, a cache made for another target, tokenizer,
        reference (when `ref_path` is given), data, temperature (when given), beta (jsd), output vocabulary
        or K (when given); a cache whose L_ref is measured in another divergence than `divergence`, the one
        the run's Δ uses (None: the run reads no L_ref; the target's top-K does not depend on it); and, when
        `hidden_layers` are asked for, a cache without hidden states, without one of those layers, or of
        another hidden size. `verify` checks every shard against the sha256 in the manifest.
        """
        root = Path(path)
        if not root.is_dir():
            raise AdaspecError(f"teacher cache not found: {root}")
        if not (root / MANIFEST).is_file():
            raise AdaspecError(f"{root} has no {MANIFEST}: not a teacher cache (build one with `adaspec cache`)")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AdaspecError(f"{root / MANIFEST} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise AdaspecError(f"{root} has cache format {found}, this adaspec reads {FORMAT_VERSION}")
        try:
            return cls._checked(
                root,
                manifest,
                target_path,
                ref_path,
                items,
                divergence,
                temperature,
                beta,
                vocab,
                top_k,
                hidden_layers,
                hidden_size,
                verify,
            )
        except (KeyError, TypeError) as exc:
            raise AdaspecError(f"{root / MANIFEST} is malformed (bad or missing field {exc})") from None

    # Every refusal of a cache that does not match the run, in the order a user would fix them: one list of
    # one-line checks, kept together so none is skipped.
    @classmethod
    def _checked(
        cls,
        root: Path,
        manifest: dict,
        target_path: str | os.PathLike,
        ref_path: str | os.PathLike | None,
        items: list[data_lib.Item],
        divergence: str | None,
        temperature: float | None,
        beta: float | None,
        vocab: int | None,
        top_k: int | None,
        hidden_layers: tuple[int, ...] | None,
        hidden_size: int | None,
        verify: bool,
    ) -> TeacherCache:
        n_shards = len(shard_ranges(manifest["data"]["n_items"], manifest["shard_size"]))
        if not manifest.get("complete"):
            raise AdaspecError(
                f"teacher cache {root} is incomplete ({len(manifest.get('shards', []))} of "
                f"{n_shards} shards); rerun `adaspec cache` with --output {root} to finish it"
            )

        def refuse(what: str, cached: Any, wanted: Any) -> AdaspecError:
            return AdaspecError(
                f"teacher cache {root} was built for another {what} "
                f"(cache: {cached}, this run: {wanted}); rebuild it with `adaspec cache`"
            )

        fp = model_fingerprint(target_path)
        if manifest["target"]["fingerprint"] != fp:
            raise refuse(
                "target", f"{manifest['target']['path']} {manifest['target']['fingerprint']}", f"{target_path} {fp}"
            )
        tok_hash = vocab_fingerprint(load_tokenizer(target_path))
        if manifest["tokenizer_vocab_hash"] != tok_hash:
            raise refuse("tokenizer", manifest["tokenizer_vocab_hash"], tok_hash)
        if ref_path is not None and manifest["ref"] is not None:
            rfp = model_fingerprint(ref_path)
            if manifest["ref"]["fingerprint"] != rfp:
                raise refuse(
                    "reference model",
                    f"{manifest['ref']['path']} {manifest['ref']['fingerprint']}",
                    f"{ref_path} {rfp}",
                )
        d = manifest["data"]
        ifp = items_fingerprint(items)
        if d["items_fingerprint"] != ifp:
            raise refuse(
                "training data",
                f"{d['n_items']} examples {d['items_fingerprint']}",
                f"{len(items)} examples {ifp}; use the same --task/--data/--limit/--max-length",
            )
        if divergence is not None and manifest["ref"] is not None and manifest["divergence"] != divergence:
            raise refuse("divergence of L_ref", manifest["divergence"], divergence)
        if temperature is not None and float(manifest["temperature"]) != float(temperature):
            raise refuse("temperature", manifest["temperature"], temperature)
        if (
            beta is not None
            and divergence == "jsd"
            and manifest["ref"] is not None
            and float(manifest["beta"]) != float(beta)
        ):
            raise refuse("jsd beta", manifest["beta"], beta)
        if vocab is not None and int(manifest["vocab_size"]) != int(vocab):
            raise refuse("output vocabulary size", manifest["vocab_size"], vocab)
        if top_k is not None and int(manifest["top_k"]) != int(top_k):
            raise refuse("top-k", manifest["top_k"], top_k)
        if hidden_layers is not None:
            cached = manifest.get("hidden")
            if cached is None:
                raise AdaspecError(
                    f"teacher cache {root} holds no target hidden states; rebuild it with "
                    f"`adaspec cache --hidden-layers ...` (e.g. {','.join(map(str, hidden_layers))})"
                )
            absent = [i for i in dict.fromkeys(hidden_layers) if i not in cached["layers"]]
            if absent:
                wanted = ",".join(map(str, dict.fromkeys(hidden_layers)))
                raise AdaspecError(
                    f"teacher cache {root} holds the hidden states of layers {cached['layers']}, "
                    f"not {absent}; rebuild it with `adaspec cache --hidden-layers {wanted}`"
                )
            if hidden_size is not None and int(cached["size"]) != int(hidden_size):
                raise refuse("hidden size", cached["size"], hidden_size)

        shards = []
        ranges = shard_ranges(d["n_items"], manifest["shard_size"])
        if len(manifest["shards"]) != len(ranges):
            raise AdaspecError(f"{root / MANIFEST} lists {len(manifest['shards'])} shards, expected {len(ranges)}")
        for (first, count), rec in zip(ranges, manifest["shards"]):
            shard = root / rec["file"]
            if not shard.is_file():
                raise AdaspecError(
                    f"teacher cache {root} lacks shard {rec['file']}; rerun `adaspec cache` "
                    f"with --output {root} to redo it"
                )
            if verify and sha256_file(shard) != rec["sha256"]:
                raise AdaspecError(
                    f"corrupt cache shard {shard}: checksum differs from the manifest; rerun "
                    f"`adaspec cache` with --output {root} to redo it"
                )
            arrays, meta = read_shard(shard)
            check_shard(arrays, meta, shard, manifest, first, count, rec["rows"], rec.get("positions"))
            shards.append(arrays)
        return cls(root, manifest, shards)

    def batch(self, indices: list[int], width: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Cached teacher rows for items `indices` of a right-padded batch `width` tokens wide.

        Aligned with the shifted training positions (`logits[:, :-1]`, `labels[:, 1:]`): one tensor per
        array of `ROW_ARRAYS` ("topk_ids" int64 [B, width-1, K], "topk_logprobs" float32 [B, width-1, K]
        and, with a reference, "ref_div" float32 [B, width-1]). Positions that are not response tokens hold id 0 with
        log-probability 0 (and
        L_ref 0): the divergences stay finite there and the training mask drops them.
        """
        cols = max(width - 1, 0)
        specs = row_arrays(self.manifest)
        out = {
            name: np.zeros((len(indices), cols, *spec.width(self.manifest)), dtype=spec.dtype)
            for name, spec in specs.items()
        }
        for row, index in enumerate(indices):
            s, lo, hi = self._rows_of(index, "response")
            arrays = self._shards[s]
            pos = arrays["positions"][lo:hi]
            if hi > lo and int(pos[-1]) >= width - 1:
                raise AdaspecError(f"item {index} has response tokens past the batch width {width}")
            for name in specs:
                out[name][row, pos] = arrays[name][lo:hi]
        return {name: torch.from_numpy(a).to(specs[name].batch_dtype).to(device) for name, a in out.items()}

    def hidden(
        self, indices: list[int], width: int, layers: tuple[int, ...], device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The target's hidden states of `layers` (in that order; each one the cache holds) for items
        `indices` of a right-padded batch `width` tokens wide: float32 [len(layers), B, width, H], laid out
        as `decoding.target.features` returns them; padding positions hold 0."""
        if self.hidden_layers is None:
            raise AdaspecError(f"teacher cache {self.path} holds no target hidden states")
        pick = [self.hidden_layers.index(i) for i in layers]
        spec = ROW_ARRAYS["hidden"]
        out = np.zeros((len(indices), width, len(pick), spec.width(self.manifest)[1]), dtype=spec.dtype)
        for row, index in enumerate(indices):
            s, lo, hi = self._rows_of(index, "position")
            if hi - lo > width:
                raise AdaspecError(f"item {index} has {hi - lo} tokens, more than the batch width {width}")
            out[row, : hi - lo] = self._shards[s]["hidden"][lo:hi][:, pick]
        return torch.from_numpy(out).to(device=device, dtype=spec.batch_dtype).permute(2, 0, 1, 3)

    def _rows_of(self, index: int, per: str) -> tuple[int, int, int]:
        if not 0 <= index < self.n_items:
            raise AdaspecError(f"item {index} is not in the teacher cache ({self.n_items} items)")
        return self._where[per][index]


def _item_rows(shards: list[dict[str, np.ndarray]], offsets_name: str) -> list[tuple[int, int, int]]:
    out = []
    for s, arrays in enumerate(shards):
        o = arrays[offsets_name]
        out += [(s, int(o[i]), int(o[i + 1])) for i in range(len(o) - 1)]
    return out


def shard_ranges(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(shard_size, n_items - s)) for s in range(0, n_items, shard_size)]
