"""Task quality of generated text: shows that a target model does its task, not just that drafts match it.

GSM8K: final-answer accuracy; MBPP: pass@1 of the generated code against the task's asserts, run in
adaspec.evaluation.sandbox; CNN/DailyMail and XSum: ROUGE-L F1; Alpaca: unigram overlap F1 with the reference
output (a cheap stand-in for the paper's judge-based scores).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from adaspec.errors import AdaspecError
from adaspec.evaluation import sandbox

QUALITY_METRIC: dict[str, str] = {
    "gsm8k": "accuracy",
    "alpaca": "overlap_f1",
    "mbpp": "pass@1",
    "cnn_dailymail": "rouge_l",
    "xsum": "rouge_l",
}

_NUMBER = r"-?[\d,]*\.?\d+"
_MARKED = re.compile(r"(?:The final answer is:|####)\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)


def _normalise_number(text: str) -> str:
    text = text.replace(",", "")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.startswith("-") and text.strip("-0") == "":
        text = "0"
    return text or "0"


def gsm8k_extract_answer(text: str) -> str | None:
    """The number after "The final answer is:" or "####" (the last such), else the last number; None if none.

    Commas and trailing zero decimals are dropped: "1,000.00" -> "1000".
    """
    marked = _MARKED.findall(text)
    if marked:
        return _normalise_number(marked[-1])
    numbers = [n for n in re.findall(_NUMBER, text) if any(c.isdigit() for c in n)]
    return _normalise_number(numbers[-1]) if numbers else None


def gsm8k_correct(generated: str, reference_answer: str) -> bool:
    """Whether the generated solution's final number equals the reference (a number or a full solution)."""
    predicted, expected = gsm8k_extract_answer(generated), gsm8k_extract_answer(reference_answer)
    if predicted is None or expected is None:
        return False
    try:
        return abs(float(predicted) - float(expected)) < 1e-9
    except ValueError:
        return predicted == expected


def _words(text: str) -> list[str]:
    # as rouge_score's default tokenizer: lowercase, non-alphanumerics split words
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_ref
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of lowercase word tokens); 0.0 when either side is empty."""
    pred, ref = _words(prediction), _words(reference)
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


def overlap_f1(prediction: str, reference: str) -> float:
    """Unigram F1 of lowercase word tokens, counting repeated words at most as often as both hold them."""
    pred, ref = _words(prediction), _words(reference)
    common = sum((Counter(pred) & Counter(ref)).values())
    return _f1(common, len(pred), len(ref))


def mbpp_pass(
    code: str, test_list: list[str], test_setup_code: str = "", timeout: float = 5.0, memory_mb: int = 1024
) -> bool:
    """Whether `code` passes every assert of `test_list`; never raises on bad code.

    The code runs in adaspec.evaluation.sandbox (its own namespaces, uid, limits and empty folder where the
    OS allows; `sandbox.isolation()` says which). It passes only if the process exits 0 after the last assert.
    """
    if not test_list:
        raise AdaspecError("mbpp_pass needs at least one test")
    return sandbox.run_candidate(
        code, test_list, setup=test_setup_code or "", timeout=timeout, memory_mb=memory_mb
    ).passed


def score(task: str, generated_text: str, example: Any) -> float:
    """The task's quality of one generated response to `example` (an adaspec.data.Example), in [0, 1]."""
    meta = getattr(example, "meta", {}) or {}
    reference = getattr(example, "response", "")
    if task == "gsm8k":
        return float(gsm8k_correct(generated_text, meta.get("answer") or reference))
    if task == "mbpp":
        if not meta.get("test_list"):
            raise AdaspecError("an MBPP example needs meta['test_list'] to be scored")
        return float(mbpp_pass(generated_text, meta["test_list"], meta.get("test_setup_code", "")))
    if task in ("cnn_dailymail", "xsum"):
        return rouge_l(generated_text, meta.get("reference", reference))
    if task == "alpaca":
        return overlap_f1(generated_text, meta.get("reference", reference))
    raise AdaspecError(f"no quality metric for task {task!r}; tasks with one: {', '.join(QUALITY_METRIC)}")
