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

With --hidden-layers the cache also holds the target's hidden states of those layers at every token, from
the same forward (adaspec.distill.hidden_states), so `adaspec train-head --teacher-cache DIR` trains EAGLE,
MTP and Medusa heads on p and those states with no target forward; their size is estimated, and refused
over --max-hidden-gb, before any model is loaded.

The format (shard schema, manifest, reader) is adaspec.distill.cache_store. Shards are written atomically
and recorded with their sha256 in the manifest as they finish, so an interrupted build resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaspec import data as data_lib
from adaspec.data.options import train_items
from adaspec.distill import losses
from adaspec.distill.cache_store import (
    FORMAT_VERSION,
    MANIFEST,
    ROW_ARRAYS,
    SHARD_NAME,
    check_shard,
    items_fingerprint,
    read_shard,
    response_positions,
    row_arrays,
    sha256_file,
    shard_ranges,
    vocab_fingerprint,
    write_shard,
)
from adaspec.distill.hidden_states import hidden_settings
from adaspec.distill.teacher import shifted_logits
from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json
from adaspec.models import (
    check_vocab_compatible,
    load_model,
    load_tokenizer,
    model_fingerprint,
    saved_tokenizer,
    shared_vocab,
)
from adaspec.models.target import features
from adaspec.recipes.cache_options import CacheOptions
from adaspec.safety import guarded_output

# ------------------------------------------------------------------------------------------ building


@torch.inference_mode()
def teacher_rows(
    target: torch.nn.Module,
    ref: torch.nn.Module | None,
    batch: data_lib.Batch,
    k: int,
    divergence: str,
    temperature: float,
    beta: float,
    vocab: int,
    layers: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Top-k ids/log-probs of the target (and L_ref) at the response positions of a right-padded batch,
    and the target's hidden states of `layers` at every position, from the same forward.

    Returns (ids [R, k], logprobs [R, k], ref_div [R] or None, hidden [B, T, layers, H] or None), rows in
    row-major order of the shifted response mask (`data.response_mask`): exactly the positions
    `TeacherCache.batch` fills.
    """
    mask = data_lib.response_mask(batch["labels"])
    hidden = None
    if layers:
        logits, states = features(target, batch, layers)
        p_logits, hidden = logits[:, :-1, :vocab], states.permute(1, 2, 0, 3)
    else:
        p_logits = shifted_logits(target, batch, vocab)
    ids, lps = losses.topk_teacher(p_logits[mask], k, temperature)
    ref_div = None
    if ref is not None:
        r_logits = shifted_logits(ref, batch, vocab)
        ref_div = losses.sparse_divergence(divergence, ids, lps, r_logits[mask], temperature=temperature, beta=beta)
    return ids, lps, ref_div, hidden


def _build_shard(
    target: torch.nn.Module,
    ref: torch.nn.Module | None,
    items: list[data_lib.Item],
    opts: CacheOptions,
    settings: dict,
    pad_id: int,
    device: torch.device,
    bar: Any,
) -> dict[str, np.ndarray]:
    positions = [response_positions(it["labels"]) for it in items]
    counts = np.array([len(p) for p in positions], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_rows = int(offsets[-1])
    specs = row_arrays(settings)
    out = {name: np.zeros((n_rows, *spec.width(settings)), dtype=spec.dtype) for name, spec in specs.items()}
    layers = tuple(settings["hidden"]["layers"]) if "hidden" in settings else ()
    if layers:
        pos_offsets = np.concatenate([[0], np.cumsum([len(it["input_ids"]) for it in items])]).astype(np.int64)
        spec = ROW_ARRAYS["hidden"]
        out["hidden"] = np.zeros((int(pos_offsets[-1]), *spec.width(settings)), dtype=spec.dtype)
        out["position_offsets"] = pos_offsets
    # batches of similar length waste less compute on padding; right padding leaves earlier positions alone
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    for s in range(0, len(order), opts.batch_size):
        chosen = order[s : s + opts.batch_size]
        batch = {k: v.to(device) for k, v in data_lib.collate([items[i] for i in chosen], pad_id).items()}
        top_ids, top_lps, rdiv, hidden = teacher_rows(
            target, ref, batch, opts.top_k, opts.divergence, opts.temperature, opts.beta, settings["vocab_size"], layers
        )
        made = {"topk_ids": top_ids, "topk_logprobs": top_lps, "ref_div": rdiv}
        made = {name: made[name].cpu().numpy() for name in specs}
        r = 0
        for i in chosen:  # rows come back row-major: item by item, position by position
            lo, hi = offsets[i], offsets[i + 1]
            for name in specs:
                out[name][lo:hi] = made[name][r : r + hi - lo]
            r += hi - lo
        if hidden is not None:
            states = hidden.to(torch.float16).cpu().numpy()
            if not np.isfinite(states).all():
                raise AdaspecError(
                    "the target's hidden states exceed the fp16 range of the cache; cache other "
                    "--hidden-layers or train the head live (without --teacher-cache)"
                )
            for b, i in enumerate(chosen):
                out["hidden"][pos_offsets[i] : pos_offsets[i + 1]] = states[b, : len(items[i]["input_ids"])]
        if bar is not None:
            bar.update(len(chosen))
    out["positions"] = np.concatenate(positions) if positions else np.zeros(0, np.int32)
    out["row_offsets"] = offsets.astype(np.int64)
    return out


def cache_settings(
    opts: CacheOptions, items: list[data_lib.Item], tokenizer: Any, vocab: int, hidden: dict | None = None
) -> dict:
    """Everything a cache depends on; resuming into a directory requires all of it to be equal. `hidden`
    (`hidden_states.hidden_settings`) is recorded only when given, so caches without it keep their key."""
    settings = {
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
        "data": {
            "task": None if opts.data else opts.task,
            "data": opts.data,
            "prompt_field": opts.prompt_field,
            "response_field": opts.response_field,
            "data_dir": opts.data_dir,
            "limit": opts.limit,
            "max_length": opts.max_length,
            "n_items": len(items),
            "items_fingerprint": items_fingerprint(items),
            "response_tokens": int(sum(len(response_positions(it["labels"])) for it in items)),
        },
    }
    return settings | ({"hidden": hidden} if hidden is not None else {})


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
    roles = {"target": opts.target, "reference": opts.ref, "--data": opts.data, "--data-dir": opts.data_dir}
    with guarded_output(opts.output, roles):
        return _run_cache(opts)


# The cache command top to bottom (settings, refusal of a stale cache, the shards, the manifest last):
# the order is what makes it resumable, so it reads as one function.
def _run_cache(opts: CacheOptions) -> dict:
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(opts.target, chat_template=opts.chat_template)
    items, _ = train_items(opts, tokenizer, print)
    # the size estimate comes first: an oversized cache is refused before any weight is loaded
    hidden = hidden_settings(opts.hidden_layers, opts.target, items, opts.max_hidden_gb) if opts.hidden_layers else None
    target = load_model(opts.target, device=device)
    ref = None
    if opts.ref:
        ref = load_model(opts.ref, device=device)
        check_vocab_compatible(target, ref, tokenizer, saved_tokenizer(opts.ref), names=("target", "reference"))
    vocab = shared_vocab(target, *([ref] if ref is not None else []))
    if opts.top_k > vocab:
        raise AdaspecError(f"--top-k {opts.top_k} exceeds the vocabulary ({vocab})")
    settings = cache_settings(opts, items, tokenizer, vocab, hidden)
    key = hashlib.sha256(
        json.dumps(
            {k: v for k, v in settings.items() if k not in ("target", "ref")}
            | {"target": settings["target"]["fingerprint"], "ref": settings["ref"] and settings["ref"]["fingerprint"]},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    settings["cache_key"] = key

    out = Path(opts.output)
    done: dict[str, dict] = {}
    earlier_seconds = 0.0
    if (out / MANIFEST).exists():
        try:
            old = json.loads((out / MANIFEST).read_text())
        except json.JSONDecodeError:
            raise AdaspecError(f"{out / MANIFEST} is unreadable; delete {out} to rebuild the cache") from None
        if old.get("cache_key") != key:
            compared = (set(settings) | {"hidden"}) - {"cache_key"}  # "hidden" may be on one side only
            diff = _differences(
                {k: v for k, v in old.items() if k in compared}, {k: v for k, v in settings.items() if k in compared}
            )
            raise AdaspecError(
                f"{out} holds a cache for other settings ({'; '.join(diff[:3]) or 'format'}); "
                f"use another --output or delete it"
            )
        done = {rec["file"]: rec for rec in old.get("shards", [])}
        earlier_seconds = float(old.get("build_seconds") or 0.0)
    elif any(out.glob("shard-*.safetensors")):
        raise AdaspecError(f"{out} holds shards but no {MANIFEST}; use another --output or delete it")

    ranges = shard_ranges(len(items), opts.shard_size)
    manifest = {**settings, "complete": False, "shards": [], "command": " ".join(sys.argv), "options": asdict(opts)}
    pad_id = data_lib.pad_id(tokenizer)
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="cache", unit="ex", dynamic_ncols=True)
    kept = redone = 0
    for n, (first, count) in enumerate(ranges):
        name = SHARD_NAME.format(n)
        path = out / name
        rows = int(sum(len(response_positions(it["labels"])) for it in items[first : first + count]))
        record = {"file": name, "first": first, "count": count, "rows": rows}
        if hidden is not None:
            record["positions"] = int(sum(len(it["input_ids"]) for it in items[first : first + count]))
        if path.exists():
            try:
                arrays, meta = read_shard(path)
                check_shard(arrays, meta, path, settings, first, count, rows, record.get("positions"))
                digest = sha256_file(path)
                if name in done and done[name]["sha256"] != digest:
                    raise AdaspecError(f"corrupt cache shard {path}: checksum differs from the manifest")
                manifest["shards"].append({**record, "sha256": digest})
                kept += 1
                if bar is not None:
                    bar.update(count)
                continue
            except AdaspecError as exc:
                print(f"adaspec cache: {exc}; redoing it", file=sys.stderr)
                redone += 1
        tensors = _build_shard(target, ref, items[first : first + count], opts, settings, pad_id, device, bar)
        write_shard(path, tensors, {"cache_key": key, "first": str(first), "count": str(count)})
        manifest["shards"].append({**record, "sha256": sha256_file(path)})
        atomic_write_json(out / MANIFEST, manifest)
    if bar is not None:
        bar.close()
    for stray in out.glob("*.tmp"):
        stray.unlink()
    manifest["complete"] = True
    # a finished cache opened again keeps its build time; a resumed one adds this run's
    now = time.perf_counter() - t0
    manifest["build_seconds"] = round(
        earlier_seconds if kept == len(ranges) and earlier_seconds else earlier_seconds + now, 3
    )
    manifest["size_bytes"] = sum(f.stat().st_size for f in out.glob("shard-*.safetensors"))
    atomic_write_json(out / MANIFEST, manifest)
    print(
        f"cache {out}: {len(items)} examples, {settings['data']['response_tokens']} response tokens, "
        f"top-{opts.top_k}{' + L_ref' if ref is not None else ''}"
        + (f" + hidden states of layers {hidden['layers']}" if hidden is not None else "")
        + f", {manifest['size_bytes'] / 2**20:.1f} MiB"
        f" ({kept} shards kept, {redone} redone) in {manifest['build_seconds']:.1f}s"
    )
    return manifest
