"""Model presets built from configs in code, and safe loading/saving of Hugging Face causal LMs.

Tests and the default run never download weights: they build tiny GPT-NeoX / Llama / GPT-2 models from
the presets (adaspec.presets). Real users pass a directory or hub id to `load_model`, which only reads
safetensors and never runs remote code unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from adaspec.data import chat
from adaspec.errors import AdaspecError, warn
from adaspec.presets import LEGACY_PRESETS, PRESETS, check_preset


def preset_config(preset: str, vocab_size: int, bos_token_id: int = 0, eos_token_id: int = 0) -> Any:
    """The transformers config of a named preset at the given vocabulary size."""
    check_preset(preset)
    arch, hidden, layers, heads, ctx = PRESETS.get(preset) or LEGACY_PRESETS[preset]
    common = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=ctx,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=ctx,
            tie_word_embeddings=False,
            **common,
        )
    # dropout off: distillation runs must be reproducible and single- vs multi-process comparable
    return GPT2Config(
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=ctx,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **common,
    )


def build_model(
    preset: str, vocab_size: int, seed: int = 0, bos_token_id: int = 0, eos_token_id: int = 0
) -> PreTrainedModel:
    """A freshly initialised model of a preset; the same seed gives the same weights."""
    config = preset_config(preset, vocab_size, bos_token_id, eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def load_model(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a directory or hub id, safetensors only."""
    local = Path(path)
    # a hub id is "name" or "namespace/name": a deeper relative path can only mean a local directory
    if local.exists() or str(path).startswith((".", "/")) or str(path).count("/") > 1:
        if not local.is_dir():
            raise AdaspecError(f"model directory not found: {path}")
        if not (local / "config.json").exists():
            raise AdaspecError(f"{path} is not a model directory (no config.json)")
        if not any(local.glob("*.safetensors")):
            raise AdaspecError(f"{path} has no .safetensors weights (only safetensors checkpoints are loaded)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its MISSING/UNEXPECTED table: refused below in one line instead
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdaspecError(f"could not load model from {path}: {first}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading_info(path, info)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _check_loading_info(path: str | os.PathLike, info: dict) -> None:
    """A checkpoint must hold exactly the model's weights: a missing one would run with random values."""
    problems = [
        (what, sorted(keys))
        for what, keys in (
            ("missing", info.get("missing_keys") or ()),
            ("unexpected", info.get("unexpected_keys") or ()),
            ("wrongly shaped", [k[0] for k in info.get("mismatched_keys") or ()]),
        )
        if keys
    ]
    if problems:
        parts = [
            f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for what, keys in problems
        ]
        raise AdaspecError(f"{path} does not match its config.json: weights " + "; ".join(parts))


def load_tokenizer(
    path: str | os.PathLike, trust_remote_code: bool = False, chat_template: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model; `chat_template` (a built-in name or a Jinja file, see
    adaspec.data.chat.resolve_template) replaces its own chat template."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"could not load tokenizer from {path}: {str(exc).splitlines()[0]}") from exc
    return chat.set_template(tokenizer, chat_template)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def saved_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside a checkpoint, or None for a local folder of weights saved without one
    (then only vocabulary sizes can be compared; AutoTokenizer would invent an empty tokenizer)."""
    local = Path(path)
    if local.is_dir() and not any((local / n).exists() for n in TOKENIZER_FILES):
        return None
    return load_tokenizer(path, trust_remote_code)


def save_model(
    model: PreTrainedModel | torch.nn.Module,
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save as a plain safetensors checkpoint that `AutoModelForCausalLM.from_pretrained` loads (a drafter
    head: that its own from_pretrained loads), with the tokenizer when given. `state_dict` replaces the
    model's own weights, as save_pretrained takes it (the training loop's, gathered over processes)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the model's output head (can exceed its tokenizer's vocabulary by padding)."""
    return int(model.get_output_embeddings().weight.shape[0])


def shared_vocab(*models: PreTrainedModel) -> int:
    """The ids every model scores: logits are compared over the first `shared_vocab` entries."""
    return min(output_vocab_size(m) for m in models)


def input_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the model's input embedding."""
    return int(model.get_input_embeddings().weight.shape[0])


def _merges(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer model's rules beyond its vocabulary (BPE merges, Unigram scores), or None when the
    tokenizer has no fast backend to read them from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str()).get("model", {})
    if isinstance(spec.get("vocab"), dict):  # compared through get_vocab()
        spec = {k: v for k, v in spec.items() if k != "vocab"}
    return json.dumps(spec, sort_keys=True)


def _same_tokenizer(a: str, b: str, ta: PreTrainedTokenizerBase, tb: PreTrainedTokenizerBase) -> None:
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va != vb:
        if len(va) == len(vb):
            differ = sum(vb.get(tok) != i for tok, i in va.items())
            raise AdaspecError(
                f"{a} and {b} tokenizers have different vocabularies ({len(va)} tokens each, "
                f"{differ} of them with other ids)"
            )
        raise AdaspecError(f"{a} and {b} tokenizers have different vocabularies ({len(va)} vs {len(vb)} tokens)")
    ma, mb = _merges(ta), _merges(tb)
    if ma is not None and mb is not None and ma != mb:
        raise AdaspecError(
            f"{a} and {b} tokenizers have the same {len(va)}-token vocabulary but different "
            f"merges, so they split text into different ids"
        )


def check_vocab_compatible(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
    draft_tokenizer: PreTrainedTokenizerBase | None = None,
    names: tuple[str, str] = ("target", "draft"),
    quiet: bool = False,
) -> None:
    """Raise unless the two models share token ids: the one vocabulary rule of every command.

    With both tokenizers (pass the same object for a model built from the other's tokenizer): the same
    vocabulary and the same merges, and every embedding at least as large as the tokenizer (rows beyond
    it are padding: Pythia pads to a multiple of 128). With one missing (weights saved without tokenizer
    files): the models' embedding and output sizes must be equal, and a warning says the merges could not
    be checked (`quiet`: library calls that were given no tokenizer at all).
    """
    a, b = names
    sizes = {
        (a, "output"): output_vocab_size(target),
        (a, "input"): input_vocab_size(target),
        (b, "output"): output_vocab_size(draft),
        (b, "input"): input_vocab_size(draft),
    }
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer is not draft_tokenizer:
            _same_tokenizer(a, b, target_tokenizer, draft_tokenizer)
        n = len(target_tokenizer)
        for (who, kind), size in sizes.items():
            if size < n:
                raise AdaspecError(f"{who}'s {kind} embedding has {size} rows, fewer than the tokenizer's {n} tokens")
        return
    for kind in ("output", "input"):
        if sizes[(a, kind)] != sizes[(b, kind)]:
            raise AdaspecError(
                f"{a} and {b} have different vocabulary sizes ({kind} embedding "
                f"{sizes[(a, kind)]} vs {sizes[(b, kind)]} rows)"
            )
    if quiet:
        return
    missing = b if draft_tokenizer is None else a
    warn(
        f"{missing} has no tokenizer files: its vocabulary size matches ({sizes[(b, 'output')]}), but its "
        f"merges could not be checked"
    )


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        # tied input/output embeddings share one tensor: subtract it once
        embeddings = {
            m.weight.data_ptr(): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
        }
        total -= sum(w.numel() for w in embeddings.values())
    return total


def model_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a checkpoint's config and weight files: caches made for one model refuse another."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) + [Path(path) / "config.json"]:
        if f.exists():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]
