"""`adaspec generate`: speculative decoding of one prompt (chains, or token trees with --tree), streaming the
text, then the acceptance stats."""

from __future__ import annotations

import json
import sys

import torch
from transformers import PreTrainedTokenizerBase

from adaspec.core.tree_shape import parse_tree_spec
from adaspec.decoding.generate import speculative_generate
from adaspec.decoding.tree_generate import tree_speculative_generate
from adaspec.drafters import FAMILIES
from adaspec.drafters.loading import load_drafter
from adaspec.models import check_vocab_compatible, load_model, load_tokenizer, saved_tokenizer
from adaspec.models.lean import LEAN
from adaspec.recipes.generate_options import GenerateOptions


class _TextStream:
    """Prints decoded text as tokens arrive. The prompt is decoded with the new tokens so word boundaries
    come out right; text ending in an incomplete UTF-8 sequence is held back until it completes. The prompt
    is printed with the first new tokens, so an error raised before decoding starts is printed alone."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]):
        self.tokenizer, self.ids = tokenizer, list(prompt_ids)
        self.printed = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def __call__(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        text = self._decode()
        if not text.endswith("\ufffd") and text.startswith(self.printed):
            self._write(text[len(self.printed) :])
            self.printed = text

    def close(self) -> None:
        """Print what is still held back (a prompt with no new tokens, a final incomplete character)."""
        text = self._decode()
        self._write(text[len(self.printed) :] if text.startswith(self.printed) else "")
        self.printed = text


def run_generate(opts: GenerateOptions) -> int:
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = load_model(opts.target, device=device)
    tokenizer = load_tokenizer(opts.target)
    if FAMILIES[opts.drafter].is_draft_model:
        draft = load_model(opts.draft, device=device)
        check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(opts.draft))
    else:
        draft = load_drafter(opts.drafter, opts.head, target, strict=opts.strict, tokenizer=tokenizer)
    input_ids = tokenizer(opts.prompt, return_tensors="pt").input_ids
    if input_ids.numel() == 0 and tokenizer.bos_token_id is not None:
        input_ids = torch.tensor([[tokenizer.bos_token_id]])
    stream = None if opts.json else _TextStream(tokenizer, input_ids[0].tolist())
    common = dict(
        max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature,
        top_p=opts.top_p,
        eos_token_id=tokenizer.eos_token_id if opts.stop_at_eos else None,
        seed=opts.seed,
        tokenizer=tokenizer,
        on_tokens=stream,
        lean=LEAN[opts.decode_path],
    )
    if opts.tree is not None:
        seq, stats = tree_speculative_generate(target, draft, input_ids, tree=parse_tree_spec(opts.tree), **common)
    else:
        seq, stats = speculative_generate(
            target,
            draft,
            input_ids,
            gamma=opts.gamma,
            adaptive_gamma=opts.adaptive_gamma,
            gamma_max=opts.gamma_max,
            draft_confidence=opts.draft_confidence,
            **common,
        )
    generated = seq[0, input_ids.shape[1] :].tolist()
    if opts.json:
        print(
            json.dumps(
                {
                    "prompt": opts.prompt,
                    "text": tokenizer.decode(generated, skip_special_tokens=True),
                    "tokens": generated,
                    "stats": stats.to_dict(),
                }
            )
        )
    else:
        stream.close()
        print("\n")
        print(stats.format())
    return 0
