import time

import pytest

from adaspec.data import TASKS, Example, load_task
from adaspec.errors import AdaspecError
from adaspec.evaluation.quality import (
    QUALITY_METRIC,
    gsm8k_correct,
    gsm8k_extract_answer,
    mbpp_pass,
    overlap_f1,
    rouge_l,
    score,
)


def test_gsm8k_extract_answer():
    assert gsm8k_extract_answer("so 3 + 4 = 7\nThe final answer is:  72") == "72"
    assert gsm8k_extract_answer("blah #### 1,234") == "1234"
    assert gsm8k_extract_answer("The final answer is: $18.00.") == "18"
    assert gsm8k_extract_answer("The final answer is: 2.50") == "2.5"
    assert gsm8k_extract_answer("We get 5 apples, then 12 more, so 17.") == "17"
    assert gsm8k_extract_answer("The final answer is: -3") == "-3"
    assert gsm8k_extract_answer("no numbers here") is None
    assert gsm8k_extract_answer("") is None


def test_gsm8k_correct():
    ref = load_task("gsm8k", "train", limit=1)[0]
    assert gsm8k_correct(ref.response, ref.meta["answer"])
    assert gsm8k_correct("... The final answer is: 72.0", "Natalia ... #### 72")
    assert not gsm8k_correct("The final answer is: 71", "72")
    assert not gsm8k_correct("I don't know", "72")


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # LCS("a b c d", "a c b d") = 3 -> P = R = F = 3/4
    assert rouge_l("A b, c d!", "a c b d") == pytest.approx(0.75)
    assert rouge_l("same text", "Same  TEXT.") == 1.0
    assert rouge_l("", "reference") == 0.0
    assert rouge_l("prediction", "") == 0.0
    assert rouge_l("", "") == 0.0
    assert rouge_l("x y z", "a b c") == 0.0


def test_overlap_f1():
    # common = {the:1, cat:1}: P = 2/3, R = 2/4
    assert overlap_f1("the cat sat", "the the cat ran") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert overlap_f1("", "x") == 0.0 and overlap_f1("Hello, world", "hello world") == 1.0


def test_mbpp_reference_passes_and_wrong_fails():
    ex = load_task("mbpp", "test", limit=1)[0]
    assert mbpp_pass(ex.response, ex.meta["test_list"], ex.meta["test_setup_code"])
    assert not mbpp_pass("def remove_Occ(s, ch):\n    return s\n", ex.meta["test_list"])
    assert not mbpp_pass("def remove_Occ(s, ch) return s", ex.meta["test_list"])  # syntax error
    assert not mbpp_pass("", ex.meta["test_list"])  # NameError


def test_mbpp_setup_code_is_run():
    assert mbpp_pass("def double(x):\n    return 2 * x", ["assert double(y) == 6"], test_setup_code="y = 3")


def test_mbpp_sandbox_limits():
    start = time.monotonic()
    assert not mbpp_pass("def f():\n    while True:\n        pass", ["assert f() is None"], timeout=1.0)
    assert time.monotonic() - start < 4
    # an early clean exit must not count as passing
    assert not mbpp_pass("import sys\nsys.exit(0)", ["assert False"])
    # sockets are blocked
    net = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9))\n    ok = False\nexcept OSError:\n    ok = True"
    assert mbpp_pass(net, ["assert ok"])
    # memory is limited
    assert not mbpp_pass("x = bytearray(4 * 2**30)", ["assert x"], memory_mb=512)


def test_score_dispatch():
    assert set(QUALITY_METRIC) == set(TASKS)
    gsm = load_task("gsm8k", "test", limit=1)[0]
    assert score("gsm8k", gsm.response, gsm) == 1.0 and score("gsm8k", "The final answer is: 0", gsm) == 0.0
    mbpp = load_task("mbpp", "validation", limit=1)[0]
    assert score("mbpp", mbpp.response, mbpp) == 1.0
    for task in ("cnn_dailymail", "xsum", "alpaca"):
        ex = load_task(task, "test", limit=1)[0]
        assert score(task, ex.response, ex) == pytest.approx(1.0)
        assert 0.0 <= score(task, "the of a", ex) < 0.5
    with pytest.raises(AdaspecError, match="no quality metric"):
        score("mytask", "x", Example("p", "r"))
