"""The `cache` command: the frozen target's top-K distribution and the reference's divergence, stored once.

In AdaSPEC both the target and the reference model are frozen, yet the official trainer runs both forward
on every step of every epoch. `adaspec cache` runs them once over the training data and stores, per
RESPONSE token (the shifted positions t with labels[t+1] != -100, where the logits at t predict token t+1):

- the target's top-K token ids and log-probabilities at the distillation temperature. The rest of the
  mass, 1 - sum(top-K), is an implied tail bucket, so the stored distribution still sums to 1;
- with --ref, the reference model's per-token divergence L_ref, computed with
  `losses.sparse_divergence` on the same top-K + tail buckets as the draft's divergence in training.
  Δ = L_draft - L_ref therefore compares two divergences to the same (K+1)-bucket teacher; with K = V
  both are the exact divergences of the uncached path.

`adaspec distill --teacher-cache DIR` then reads p and L_ref from here, so no target or reference forward
runs during training, for DistillSpec (kd) and AdaSPEC drafts alike.

Layout: DIR/manifest.json plus DIR/shard-NNNNN.safetensors, one shard per --shard-size examples. A shard
holds its rows back to back: topk_ids int32 [R, K], topk_logprobs float32 [R, K], ref_div float32 [R]
(with --ref), positions int32 [R] (the shifted position of each row in its item) and row_offsets int64
[n + 1] (item i's rows are row_offsets[i]:row_offsets[i+1]). The manifest records model fingerprints,
the tokenizer's vocabulary hash, a fingerprint of the encoded items (every item's input_ids and labels),
K, the divergence, temperature, beta and the data settings; `TeacherCache.open` refuses a cache whose
fingerprints or settings differ from the run's. Shards are written atomically and recorded with their
sha256 in the manifest as they finish, so an interrupted build resumes where it stopped. Shards are
memory-mapped when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adaspec import data as data_lib
from adaspec import losses
from adaspec.errors import AdaspecError
from adaspec.models import check_vocab_compatible, load_model, load_tokenizer, model_fingerprint, output_vocab_size
from adaspec.train import DataOptions, encode, load_split

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:05d}.safetensors"
_DTYPES = {"I32": np.int32, "I64": np.int64, "F32": np.float32}


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(kw_only=True)
class CacheOptions(DataOptions):
    """Store the target's top-K next-token distribution (and the reference's divergence) per response token.

    The data flags are those of `adaspec distill`: give the same ones, so the cache covers exactly the
    examples distillation trains on (the cache checks this by a fingerprint of the encoded examples).
    """

    target: str = field(metadata=_help("target model directory (its tokenizer encodes the data)"))
    ref: str | None = field(default=None, metadata=_help(
        "reference model directory: also store its per-token divergence L_ref (needed by --method adaspec)"))
    output: str = field(metadata=_help("cache directory (an interrupted build there is resumed)"))
    batch_size: int = field(default=16, metadata=_help("examples per target/reference forward"))
    top_k: int = field(default=64, metadata=_help("target token ids and log-probabilities kept per token"))
    divergence: Literal["fkl", "rkl", "tvd", "jsd"] = field(default="fkl", metadata=_help(
        "divergence of L_ref; must match distill's --divergence"))
    temperature: float = field(default=1.0, metadata=_help(
        "distillation temperature of the stored log-probabilities; must match distill's --temperature"))
    beta: float = field(default=0.5, metadata=_help("JSD mixture weight of L_ref (with --divergence jsd)"))
    shard_size: int = field(default=512, metadata=_help("examples per shard file (the unit of resume)"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "top_k", "shard_size"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise AdaspecError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.beta <= 1:
            raise AdaspecError(f"--beta must be in [0, 1], got {self.beta}")


# ------------------------------------------------------------------------------------------ fingerprints

def items_fingerprint(items: list[dict]) -> str:
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
    """Shifted positions t whose logits predict a response token (labels[t+1] != -100)."""
    lab = np.asarray(labels, dtype=np.int64)
    return np.nonzero(lab[1:] != data_lib.IGNORE_INDEX)[0].astype(np.int32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ shard files

def _read_shard(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
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
            arrays[name] = raw[8 + n + start: 8 + n + stop].view(dtype).reshape(shape)
            end = max(end, stop)
        if 8 + n + end != size:
            raise ValueError(f"file has {size} bytes, its header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, struct.error) as exc:
        raise AdaspecError(f"corrupt cache shard {path}: {exc}") from None
    return arrays, meta


def _check_shard(arrays: dict[str, np.ndarray], meta: dict[str, str], path: Path, key: str, first: int,
                 count: int, top_k: int, has_ref: bool, rows: int | None = None) -> None:
    """Raise AdaspecError unless the shard is the one expected at this place of this cache."""
    def bad(why: str) -> AdaspecError:
        return AdaspecError(f"corrupt cache shard {path}: {why}; delete it and rerun `adaspec cache` to redo it")

    if meta.get("cache_key") != key:
        raise bad("it was written for other settings")
    if (int(meta.get("first", -1)), int(meta.get("count", -1))) != (first, count):
        raise bad(f"it holds examples {meta.get('first')}+{meta.get('count')}, expected {first}+{count}")
    needed = ["topk_ids", "topk_logprobs", "positions", "row_offsets"] + (["ref_div"] if has_ref else [])
    missing = [n for n in needed if n not in arrays]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    offsets = arrays["row_offsets"]
    n_rows = arrays["positions"].shape[0]
    if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != n_rows or np.any(np.diff(offsets) < 0):
        raise bad("row offsets are inconsistent")
    if arrays["topk_ids"].shape != (n_rows, top_k) or arrays["topk_logprobs"].shape != (n_rows, top_k):
        raise bad(f"top-k arrays are not [{n_rows}, {top_k}]")
    if has_ref and arrays["ref_div"].shape != (n_rows,):
        raise bad("ref_div has the wrong length")
    if rows is not None and rows != n_rows:
        raise bad(f"it has {n_rows} rows, expected {rows}")


def _write_shard(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ reading

class TeacherCache:
    """A finished cache, memory-mapped; `batch` lays its rows out like the training batch's logits."""

    def __init__(self, path: Path, manifest: dict, shards: list[dict[str, np.ndarray]]) -> None:
        self.path = path
        self.manifest = manifest
        self.top_k: int = int(manifest["top_k"])
        self.has_ref: bool = manifest["ref"] is not None
        self.vocab_size: int = int(manifest["vocab_size"])
        self.n_items: int = int(manifest["data"]["n_items"])
        self._shards = shards
        self._where: list[tuple[int, int, int]] = []  # item -> (shard, first row, end row)
        for s, arrays in enumerate(shards):
            offsets = arrays["row_offsets"]
            self._where += [(s, int(offsets[i]), int(offsets[i + 1])) for i in range(len(offsets) - 1)]

    @classmethod
    def open(cls, path: str | os.PathLike, *, target_path: str | os.PathLike, ref_path: str | os.PathLike | None,
             items: list[dict], divergence: str, temperature: float, beta: float | None = None,
             vocab: int | None = None, top_k: int | None = None, verify: bool = True) -> "TeacherCache":
        """Open the cache at `path` for a run on `items` with this target (and reference), or refuse.

        Refuses, with one line naming the difference, a cache made for another target, tokenizer,
        reference (when `ref_path` is given), data, divergence, temperature, beta (jsd), output vocabulary
        or K (when given). `verify` checks every shard against the sha256 in the manifest.
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
            return cls._checked(root, manifest, target_path, ref_path, items, divergence, temperature, beta,
                                vocab, top_k, verify)
        except (KeyError, TypeError) as exc:
            raise AdaspecError(f"{root / MANIFEST} is malformed (bad or missing field {exc})") from None

    @classmethod
    def _checked(cls, root: Path, manifest: dict, target_path: str | os.PathLike,
                 ref_path: str | os.PathLike | None, items: list[dict], divergence: str, temperature: float,
                 beta: float | None, vocab: int | None, top_k: int | None, verify: bool) -> "TeacherCache":
        n_shards = len(_shard_ranges(manifest["data"]["n_items"], manifest["shard_size"]))
        if not manifest.get("complete"):
            raise AdaspecError(f"teacher cache {root} is incomplete ({len(manifest.get('shards', []))} of "
                               f"{n_shards} shards); rerun `adaspec cache` with --output {root} to finish it")

        def refuse(what: str, cached: Any, wanted: Any) -> AdaspecError:
            return AdaspecError(f"teacher cache {root} was built for another {what} "
                                f"(cache: {cached}, this run: {wanted}); rebuild it with `adaspec cache`")

        fp = model_fingerprint(target_path)
        if manifest["target"]["fingerprint"] != fp:
            raise refuse("target", f"{manifest['target']['path']} {manifest['target']['fingerprint']}",
                         f"{target_path} {fp}")
        tok_hash = vocab_fingerprint(load_tokenizer(target_path))
        if manifest["tokenizer_vocab_hash"] != tok_hash:
            raise refuse("tokenizer", manifest["tokenizer_vocab_hash"], tok_hash)
        if ref_path is not None and manifest["ref"] is not None:
            rfp = model_fingerprint(ref_path)
            if manifest["ref"]["fingerprint"] != rfp:
                raise refuse("reference model", f"{manifest['ref']['path']} {manifest['ref']['fingerprint']}",
                             f"{ref_path} {rfp}")
        d = manifest["data"]
        ifp = items_fingerprint(items)
        if d["items_fingerprint"] != ifp:
            raise refuse("training data", f"{d['n_items']} examples {d['items_fingerprint']}",
                         f"{len(items)} examples {ifp}; use the same --task/--data/--limit/--max-length")
        if manifest["divergence"] != divergence:
            raise refuse("divergence", manifest["divergence"], divergence)
        if float(manifest["temperature"]) != float(temperature):
            raise refuse("temperature", manifest["temperature"], temperature)
        if beta is not None and divergence == "jsd" and manifest["ref"] is not None \
                and float(manifest["beta"]) != float(beta):
            raise refuse("jsd beta", manifest["beta"], beta)
        if vocab is not None and int(manifest["vocab_size"]) != int(vocab):
            raise refuse("output vocabulary size", manifest["vocab_size"], vocab)
        if top_k is not None and int(manifest["top_k"]) != int(top_k):
            raise refuse("top-k", manifest["top_k"], top_k)

        shards = []
        ranges = _shard_ranges(d["n_items"], manifest["shard_size"])
        if len(manifest["shards"]) != len(ranges):
            raise AdaspecError(f"{root / MANIFEST} lists {len(manifest['shards'])} shards, expected {len(ranges)}")
        for (first, count), rec in zip(ranges, manifest["shards"]):
            shard = root / rec["file"]
            if not shard.is_file():
                raise AdaspecError(f"teacher cache {root} lacks shard {rec['file']}; rerun `adaspec cache` "
                                   f"with --output {root} to redo it")
            if verify and _sha256(shard) != rec["sha256"]:
                raise AdaspecError(f"corrupt cache shard {shard}: checksum differs from the manifest; rerun "
                                   f"`adaspec cache` with --output {root} to redo it")
            arrays, meta = _read_shard(shard)
            _check_shard(arrays, meta, shard, manifest["cache_key"], first, count, manifest["top_k"],
                         manifest["ref"] is not None, rec["rows"])
            shards.append(arrays)
        return cls(root, manifest, shards)

    def batch(self, indices: list[int], width: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Cached teacher rows for items `indices` of a right-padded batch `width` tokens wide.

        Aligned with the shifted training positions (`logits[:, :-1]`, `labels[:, 1:]`): "topk_ids" int64
        [B, width-1, K], "topk_logprobs" float32 [B, width-1, K] and, with a reference, "ref_div" float32
        [B, width-1]. Positions that are not response tokens hold id 0 with log-probability 0 (and
        L_ref 0): the divergences stay finite there and the training mask drops them.
        """
        b, k = len(indices), self.top_k
        ids = np.zeros((b, max(width - 1, 0), k), dtype=np.int64)
        lps = np.zeros((b, max(width - 1, 0), k), dtype=np.float32)
        ref = np.zeros((b, max(width - 1, 0)), dtype=np.float32) if self.has_ref else None
        for row, index in enumerate(indices):
            if not 0 <= index < self.n_items:
                raise AdaspecError(f"item {index} is not in the teacher cache ({self.n_items} items)")
            s, lo, hi = self._where[index]
            arrays = self._shards[s]
            pos = arrays["positions"][lo:hi]
            if hi > lo and int(pos[-1]) >= width - 1:
                raise AdaspecError(f"item {index} has response tokens past the batch width {width}")
            ids[row, pos] = arrays["topk_ids"][lo:hi]
            lps[row, pos] = arrays["topk_logprobs"][lo:hi]
            if ref is not None:
                ref[row, pos] = arrays["ref_div"][lo:hi]
        out = {"topk_ids": torch.from_numpy(ids).to(device), "topk_logprobs": torch.from_numpy(lps).to(device)}
        if ref is not None:
            out["ref_div"] = torch.from_numpy(ref).to(device)
        return out


def _shard_ranges(n_items: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(shard_size, n_items - s)) for s in range(0, n_items, shard_size)]


# ------------------------------------------------------------------------------------------ building

@torch.inference_mode()
def teacher_rows(target: torch.nn.Module, ref: torch.nn.Module | None, batch: dict[str, torch.Tensor], k: int,
                 divergence: str, temperature: float, beta: float, vocab: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Top-k ids/log-probs of the target (and L_ref) at the response positions of a right-padded batch.

    Returns (ids [R, k], logprobs [R, k], ref_div [R] or None), rows in row-major order of the shifted
    response mask `labels[:, 1:] != -100`: exactly the positions `TeacherCache.batch` fills.
    """
    mask = batch["labels"][:, 1:] != data_lib.IGNORE_INDEX
    p_logits = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
    ids, lps = losses.topk_teacher(p_logits[mask], k, temperature)
    ref_div = None
    if ref is not None:
        r_logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
        ref_div = losses.sparse_divergence(divergence, ids, lps, r_logits[mask], temperature=temperature, beta=beta)
    return ids, lps, ref_div


def _build_shard(target: torch.nn.Module, ref: torch.nn.Module | None, items: list[dict], opts: CacheOptions,
                 vocab: int, pad_id: int, device: torch.device, bar: Any) -> dict[str, np.ndarray]:
    positions = [response_positions(it["labels"]) for it in items]
    counts = np.array([len(p) for p in positions], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_rows = int(offsets[-1])
    ids = np.zeros((n_rows, opts.top_k), dtype=np.int32)
    lps = np.zeros((n_rows, opts.top_k), dtype=np.float32)
    ref_div = np.zeros(n_rows, dtype=np.float32)
    # batches of similar length waste less compute on padding; right padding leaves earlier positions alone
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    for s in range(0, len(order), opts.batch_size):
        chosen = order[s:s + opts.batch_size]
        batch = {k: v.to(device) for k, v in data_lib.collate([items[i] for i in chosen], pad_id).items()}
        top_ids, top_lps, rdiv = teacher_rows(target, ref, batch, opts.top_k, opts.divergence,
                                                 opts.temperature, opts.beta, vocab)
        top_ids, top_lps = top_ids.cpu().numpy(), top_lps.cpu().numpy()
        rdiv = rdiv.cpu().numpy() if rdiv is not None else None
        r = 0
        for i in chosen:  # rows come back row-major: item by item, position by position
            lo, hi = offsets[i], offsets[i + 1]
            ids[lo:hi], lps[lo:hi] = top_ids[r:r + hi - lo], top_lps[r:r + hi - lo]
            if rdiv is not None:
                ref_div[lo:hi] = rdiv[r:r + hi - lo]
            r += hi - lo
        if bar is not None:
            bar.update(len(chosen))
    out = {"topk_ids": ids, "topk_logprobs": lps, "positions": np.concatenate(positions) if positions
           else np.zeros(0, np.int32), "row_offsets": offsets.astype(np.int64)}
    if ref is not None:
        out["ref_div"] = ref_div
    return out


def cache_settings(opts: CacheOptions, items: list[dict], tokenizer: Any, vocab: int) -> dict:
    """Everything a cache depends on; resuming into a directory requires all of it to be equal."""
    return {
        "format": FORMAT_VERSION,
        "target": {"path": str(opts.target), "fingerprint": model_fingerprint(opts.target)},
        "ref": {"path": str(opts.ref), "fingerprint": model_fingerprint(opts.ref)} if opts.ref else None,
        "tokenizer_vocab_hash": vocab_fingerprint(tokenizer),
        "vocab_size": vocab,
        "top_k": opts.top_k,
        "divergence": opts.divergence,
        "temperature": opts.temperature,
        "beta": opts.beta,
        "shard_size": opts.shard_size,
        "data": {"task": None if opts.data else opts.task, "data": opts.data, "prompt_field": opts.prompt_field,
                 "response_field": opts.response_field, "data_dir": opts.data_dir, "limit": opts.limit,
                 "max_length": opts.max_length, "n_items": len(items), "items_fingerprint": items_fingerprint(items),
                 "response_tokens": int(sum(len(response_positions(it["labels"])) for it in items))},
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not key.endswith("path"):
            out.append(f"{prefix}{key} ({a} vs {b})")
    return out


def run_cache(opts: CacheOptions) -> dict:
    """Build (or finish) the cache; returns its manifest."""
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(opts.target)
    target = load_model(opts.target, device=device)
    vocab = output_vocab_size(target)
    ref = None
    if opts.ref:
        ref = load_model(opts.ref, device=device)
        check_vocab_compatible(target, ref, tokenizer, load_tokenizer(opts.ref), names=("target", "reference"))
        vocab = min(vocab, output_vocab_size(ref))
    if opts.top_k > vocab:
        raise AdaspecError(f"--top-k {opts.top_k} exceeds the vocabulary ({vocab})")
    items = encode(load_split(opts, "train", opts.limit), tokenizer, opts.max_length)
    settings = cache_settings(opts, items, tokenizer, vocab)
    key = hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k not in ("target", "ref")} | {
        "target": settings["target"]["fingerprint"],
        "ref": settings["ref"] and settings["ref"]["fingerprint"]}, sort_keys=True).encode()).hexdigest()[:16]
    settings["cache_key"] = key

    out = Path(opts.output)
    if out.exists() and not out.is_dir():
        raise AdaspecError(f"--output {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    earlier_seconds = 0.0
    if (out / MANIFEST).exists():
        try:
            old = json.loads((out / MANIFEST).read_text())
        except json.JSONDecodeError:
            raise AdaspecError(f"{out / MANIFEST} is unreadable; delete {out} to rebuild the cache") from None
        if old.get("cache_key") != key:
            diff = _differences({k: v for k, v in old.items() if k in settings and k != "cache_key"},
                                {k: v for k, v in settings.items() if k != "cache_key"})
            raise AdaspecError(f"{out} holds a cache for other settings ({'; '.join(diff[:3]) or 'format'}); "
                               f"use another --output or delete it")
        done = {rec["file"]: rec for rec in old.get("shards", [])}
        earlier_seconds = float(old.get("build_seconds") or 0.0)
    elif any(out.glob("shard-*.safetensors")):
        raise AdaspecError(f"{out} holds shards but no {MANIFEST}; use another --output or delete it")

    ranges = _shard_ranges(len(items), opts.shard_size)
    manifest = {**settings, "complete": False, "shards": [], "command": " ".join(sys.argv),
                "options": asdict(opts)}
    pad_id = data_lib.pad_id(tokenizer)
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(items), desc="cache", unit="ex", dynamic_ncols=True)
    kept = redone = 0
    for n, (first, count) in enumerate(ranges):
        name = SHARD_NAME.format(n)
        path = out / name
        rows = int(sum(len(response_positions(it["labels"])) for it in items[first:first + count]))
        if path.exists():
            try:
                arrays, meta = _read_shard(path)
                _check_shard(arrays, meta, path, key, first, count, opts.top_k, ref is not None, rows)
                digest = _sha256(path)
                if name in done and done[name]["sha256"] != digest:
                    raise AdaspecError(f"corrupt cache shard {path}: checksum differs from the manifest")
                manifest["shards"].append({"file": name, "first": first, "count": count, "rows": rows,
                                           "sha256": digest})
                kept += 1
                if bar is not None:
                    bar.update(count)
                continue
            except AdaspecError as exc:
                print(f"adaspec cache: {exc}; redoing it", file=sys.stderr)
                redone += 1
        tensors = _build_shard(target, ref, items[first:first + count], opts, vocab, pad_id, device, bar)
        _write_shard(path, tensors, {"cache_key": key, "first": str(first), "count": str(count)})
        manifest["shards"].append({"file": name, "first": first, "count": count, "rows": rows,
                                   "sha256": _sha256(path)})
        _write_json(out / MANIFEST, manifest)
    if bar is not None:
        bar.close()
    for stray in out.glob("*.tmp"):
        stray.unlink()
    manifest["complete"] = True
    # a finished cache opened again keeps its build time; a resumed one adds this run's
    now = time.perf_counter() - t0
    manifest["build_seconds"] = round(earlier_seconds if kept == len(ranges) and earlier_seconds else
                                      earlier_seconds + now, 3)
    manifest["size_bytes"] = sum(f.stat().st_size for f in out.glob("shard-*.safetensors"))
    _write_json(out / MANIFEST, manifest)
    print(f"cache {out}: {len(items)} examples, {settings['data']['response_tokens']} response tokens, "
          f"top-{opts.top_k}{' + L_ref' if ref is not None else ''}, {manifest['size_bytes'] / 2**20:.1f} MiB"
          f" ({kept} shards kept, {redone} redone) in {manifest['build_seconds']:.1f}s")
    return manifest
