"""Tokenisation with label masking, batching, and tokenizer training: the encoded `Item` and the padded
`Batch` every training, caching and evaluation step reads.

Tokenisation: an encoded example is prompt ids, then response ids, then EOS; labels are -100 on the
prompt and the token ids on the response (EOS included). Prompt and response are tokenised separately,
so `encode_prompt` gives exactly the ids a model is trained to continue. A BOS token is prepended only
when the tokenizer has one that differs from EOS (Llama style); GPT-2/Pythia-style tokenizers, whose BOS
is their EOS, and our own trained tokenizer get no BOS. Chat examples (`meta["messages"]`) are laid out by
the tokenizer's chat template instead, labels on assistant turns only (adaspec/data/chat.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypedDict

from adaspec.data import chat
from adaspec.data.tasks import Example
from adaspec.errors import AdaspecError

if TYPE_CHECKING:
    import torch
    from typing_extensions import NotRequired  # typing's is Python 3.11+; annotations are never evaluated here

IGNORE_INDEX = -100
EOS_TOKEN = "<|endoftext|>"


class Item(TypedDict):
    """One encoded example (`encode_example`): prompt + response ids and their labels (IGNORE_INDEX on the
    prompt), the same length. `encode` also numbers it (`index`, its row in a teacher cache) and records its
    `prompt_length` (the ids before the first labelled one)."""

    input_ids: list[int]
    labels: list[int]
    index: NotRequired[int]
    prompt_length: NotRequired[int]


class Batch(TypedDict):
    """Items right-padded into [B, T] long tensors (`collate`); the training loop adds the items' `index`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    index: NotRequired[torch.Tensor]


# -------------------------------------------------------------------------------------------- tokenising


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise AdaspecError("the tokenizer has no EOS token; responses must end with one")
    return int(tokenizer.eos_token_id)


def _prefix(tokenizer: Any) -> list[int]:
    bos = tokenizer.bos_token_id
    return [int(bos)] if bos is not None and bos != tokenizer.eos_token_id else []


def _prompt_ids(tokenizer: Any, text_ids: list[int]) -> list[int]:
    ids = _prefix(tokenizer) + list(text_ids)
    # the first response token needs a position to be predicted from, even after an empty prompt
    return ids if ids else [_eos_id(tokenizer)]


def _cut_left(ids: list[int], n: int, keep_head: int) -> list[int]:
    """The last n ids, keeping the first `keep_head` (a BOS) in front when there is room."""
    if len(ids) <= n:
        return ids
    if 0 < keep_head < n:
        return ids[:keep_head] + ids[len(ids) - (n - keep_head) :]
    return ids[len(ids) - n :]


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    nonempty = [t for t in texts if t]
    encoded = iter(tokenizer(nonempty, add_special_tokens=False)["input_ids"] if nonempty else [])
    return [list(next(encoded)) if t else [] for t in texts]


def _assemble(
    prompt: list[int], response: list[int], max_length: int, head: int, min_response_tokens: int | None
) -> Item:
    if len(prompt) + len(response) > max_length:
        wanted = max(1, max_length // 4) if min_response_tokens is None else min_response_tokens
        keep = min(len(response), wanted)
        prompt = _cut_left(prompt, max(1, max_length - keep), head)
        response = response[: max(0, max_length - len(prompt))]
    return {"input_ids": prompt + response, "labels": [IGNORE_INDEX] * len(prompt) + response}


def _check_max_length(max_length: int) -> None:
    if max_length < 2:
        raise AdaspecError(f"max_length must be at least 2 (a prompt token and a response token), got {max_length}")


def encode_prompt(example: Example, tokenizer: Any, max_length: int | None = None) -> list[int]:
    """The prompt ids exactly as `encode_example` lays them out; cut from the left to `max_length`.

    A chat example's prompt is its conversation before the last assistant turn, in the chat template, cut
    on turn boundaries where it can be (`chat.prompt_ids`)."""
    if "messages" in example.meta:
        return chat.prompt_ids(tokenizer, example.meta["messages"], max_length) or [_eos_id(tokenizer)]
    ids = _prompt_ids(tokenizer, _tokenize(tokenizer, [example.prompt])[0])
    return _cut_left(ids, max_length, len(_prefix(tokenizer))) if max_length is not None else ids


def encode_example(example: Example, tokenizer: Any, max_length: int, min_response_tokens: int | None = None) -> Item:
    """input_ids = prompt + response + EOS; labels = -100 on the prompt, the ids on the response.

    Past `max_length`: the prompt is kept whole while it leaves room for `min_response_tokens` of the
    response (default max_length // 4, at least 1), else it is cut from the left (keeping a BOS) down to
    that; then the response is cut at the right, losing its EOS. The result may have no response tokens
    only with min_response_tokens=0.
    """
    _check_max_length(max_length)
    return _encode_all([example], tokenizer, max_length, min_response_tokens)[0]


def _encode_all(
    examples: list[Example],
    tokenizer: Any,
    max_length: int,
    min_response_tokens: int | None,
    report: chat.ChatReport | None = None,
) -> list[Item]:
    eos, head = _eos_id(tokenizer), len(_prefix(tokenizer))
    plain = [ex for ex in examples if "messages" not in ex.meta]
    prompts = iter(_tokenize(tokenizer, [ex.prompt for ex in plain]))
    responses = iter(_tokenize(tokenizer, [ex.response for ex in plain]))
    return [
        chat.encode_chat(tokenizer, ex.meta["messages"], max_length, IGNORE_INDEX, report)
        if "messages" in ex.meta
        else _assemble(
            _prompt_ids(tokenizer, next(prompts)), next(responses) + [eos], max_length, head, min_response_tokens
        )
        for ex in examples
    ]


def encode_examples(
    examples: Iterable[Example],
    tokenizer: Any,
    max_length: int,
    min_response_tokens: int | None = None,
    report: chat.ChatReport | None = None,
) -> list[Item]:
    """`encode_example` over many examples (batched), dropping those left with no response tokens;
    `report` counts the conversations cut to fit."""
    _check_max_length(max_length)
    examples = list(examples)
    encoded = _encode_all(examples, tokenizer, max_length, min_response_tokens, report)
    kept = [e for e in encoded if any(label != IGNORE_INDEX for label in e["labels"])]
    if len(kept) < len(encoded):
        warnings.warn(
            f"dropped {len(encoded) - len(kept)} of {len(encoded)} examples with no response "
            f"tokens left at max_length={max_length}",
            stacklevel=2,
        )
    return kept


def encode(
    examples: list[Example], tokenizer: Any, max_length: int, report: chat.ChatReport | None = None
) -> list[Item]:
    """`encode_examples`, each item numbered (`index`) with its `prompt_length`; an error if none is left."""
    items = encode_examples(examples, tokenizer, max_length, report=report)
    if not items:
        raise AdaspecError("no example has a response token left after truncation; raise --max-length")
    for i, item in enumerate(items):
        item["index"] = i
        item["prompt_length"] = next(j for j, lab in enumerate(item["labels"]) if lab != IGNORE_INDEX)
    return items


def with_response(item: Item, sequence: list[int]) -> Item:
    """`item` with its tokens replaced by `sequence` (the same prompt, another response) and labels to match."""
    p = item["prompt_length"]
    return {**item, "input_ids": sequence, "labels": [IGNORE_INDEX] * p + list(sequence[p:])}


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] True where the logits at position t score a response token (labels[t+1] is not ignored):
    the positions every loss, selection, cache row and analytic α is computed on."""
    return labels[..., 1:] != IGNORE_INDEX


def pad_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad, else its EOS, else 0 (masks make any id safe)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(batch: list[Item], pad_token_id: int) -> Batch:
    """Right-pad a batch: input_ids with `pad_token_id`, labels with -100, attention_mask 1 on real tokens.

    The mask and the label padding come from the lengths, so a pad id equal to EOS is safe.
    """
    import torch  # here, not at the top: the options dataclasses import this package, and --help loads no torch

    if not batch:
        raise AdaspecError("cannot collate an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), width), int(pad_token_id), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, item in enumerate(batch):
        n = len(item["input_ids"])
        if len(item["labels"]) != n:
            raise AdaspecError(f"batch item {i} has {n} input ids but {len(item['labels'])} labels")
        input_ids[i, :n] = torch.as_tensor(item["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(item["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ------------------------------------------------------------------------------------ tokenizer training


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer trained on `texts`: every string round-trips through encode/decode.

    "<|endoftext|>" (id 0) is its only special token and serves as EOS, BOS, pad and unk. Returns a
    transformers fast tokenizer, which `save_pretrained` / `AutoTokenizer.from_pretrained` handle;
    `chat_template` (see adaspec.data.chat.resolve_template) becomes its chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise AdaspecError(f"vocab_size must be at least 258 (256 bytes + the EOS token), got {vocab_size}")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return chat.set_template(
        PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=EOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            clean_up_tokenization_spaces=False,
        ),
        chat_template,
    )
