"""Tasks, prompt formats, tokenisation with label masking, batching, and tokenizer training.

adaspec/data/tasks.py reads the built-in tasks (shipped inside the package), a user's JSON Lines and hub
datasets as `Example`s; adaspec/data/encoding.py turns them into `Item`s (token ids and labels) and batches
(`Batch`). Both are re-exported here: `from adaspec import data; data.encode(...)`.
"""

from adaspec.data.encoding import (EOS_TOKEN, IGNORE_INDEX, Batch, Item, collate, encode, encode_example,
                                   encode_examples, encode_prompt, pad_id, response_mask, train_tokenizer,
                                   with_response)
from adaspec.data.tasks import (ALPACA_VALIDATION_STRIDE, CNN_DM_VALIDATION, CORPUS, DEFAULT_ARTICLE_CHARS,
                                GSM8K_ANSWER_PROMPT, GSM8K_QUESTION_PROMPT, GSM8K_VALIDATION, MBPP_SPLITS, SPLITS,
                                TASKS, XSUM_TRAIN, XSUM_VALIDATION, Example, alpaca_example, chat_example,
                                check_text, default_data_dir, format_record, gsm8k_example, load_corpus,
                                load_examples, load_hub, load_jsonl, load_task, mbpp_example, summary_example,
                                truncate_article)

__all__ = [
    "ALPACA_VALIDATION_STRIDE", "Batch", "CNN_DM_VALIDATION", "CORPUS", "DEFAULT_ARTICLE_CHARS", "EOS_TOKEN",
    "Example", "GSM8K_ANSWER_PROMPT", "GSM8K_QUESTION_PROMPT", "GSM8K_VALIDATION", "IGNORE_INDEX", "Item",
    "MBPP_SPLITS", "SPLITS", "TASKS", "XSUM_TRAIN", "XSUM_VALIDATION", "alpaca_example", "chat_example",
    "check_text", "collate", "default_data_dir", "encode", "encode_example", "encode_examples", "encode_prompt",
    "format_record", "gsm8k_example", "load_corpus", "load_examples", "load_hub", "load_jsonl", "load_task",
    "mbpp_example", "pad_id", "response_mask", "summary_example", "train_tokenizer", "truncate_article",
    "with_response",
]
