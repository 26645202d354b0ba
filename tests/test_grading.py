import threading
import time

import pytest

from edgereason.grading import (
    EQUIVALENT_CREDIT,
    EXACT_CREDIT,
    NUMERIC_MISS_CREDIT,
    WITHIN_10_PERCENT_CREDIT,
    WITHIN_20_PERCENT_CREDIT,
    WRONG_CREDIT,
    answers_equal,
    extract_answer,
    normalize_answer,
    partial_credit,
)

# (prediction, gold) pairs drawn from GSM8K and MATH-500 gold answers.
EQUAL = [
    ("18", "18"),
    ("$18.00", "18"),
    ("18 dollars", "18"),
    ("\\$18", "18"),
    ("1,000", "1000"),
    ("70,000", "70000"),
    ("x = 5", "x=5"),
    ("025", "25"),
    ("27", "27.0"),
    ("\\frac{14}{3}", "14/3"),
    ("\\dfrac{14}{3}", "\\frac{14}{3}"),
    ("0.5", "\\frac12"),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("90", "90^\\circ"),
    ("\\sqrt{117}", "3\\sqrt{13}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("6-5i", "6 - 5i"),
    ("-2,1", "1,-2"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),
    ("p-q", "p - q"),
    ("3,5,7", "3, 5, 7"),
    ("\\boxed{42}", "42"),
    ("50%", "50"),
]
NOT_EQUAL = [("17", "18"), ("0.333", "1/3"), ("1000", "100"), ("", "5"), (None, "5"), ("\\sqrt{118}", "3\\sqrt{13}")]


@pytest.mark.parametrize("pred, gold", EQUAL)
def test_equivalent_answers(pred, gold):
    assert answers_equal(pred, gold)


@pytest.mark.parametrize("pred, gold", NOT_EQUAL)
def test_different_answers(pred, gold):
    assert not answers_equal(pred, gold)


def test_extraction_rules_in_order():
    assert extract_answer("<reasoning>1+1=2</reasoning><answer>2</answer> \\boxed{3}").rule == "answer_tag"
    e = extract_answer("so the result is \\boxed{\\frac{1}{2}}.")
    assert (e.text, e.rule) == ("\\frac{1}{2}", "boxed")
    e = extract_answer("Natalia sold 48+24=72 clips.\n#### 72")
    assert (e.text, e.rule) == ("72", "gsm8k")
    e = extract_answer("first 3 apples, then 4.5 pears.")
    assert (e.text, e.rule) == ("4.5", "last_number")
    assert extract_answer("no digits here").rule == "none"
    assert extract_answer("").text is None
    # Another preset's tags are read with that preset.
    assert extract_answer("<think>x</think><answer>7</answer>", "think-answer").text == "7"


def test_normalisation():
    assert normalize_answer("The answer is $1,234.") == "1234"
    assert normalize_answer("\\boxed{7}") == "7"
    assert normalize_answer("15 cm") == "15"


@pytest.mark.parametrize(
    "pred, credit",
    [
        ("100", EXACT_CREDIT),
        ("100.0", EQUIVALENT_CREDIT),
        ("$100", EQUIVALENT_CREDIT),
        ("95", WITHIN_10_PERCENT_CREDIT),
        ("110", WITHIN_10_PERCENT_CREDIT),
        ("85", WITHIN_20_PERCENT_CREDIT),
        ("50", NUMERIC_MISS_CREDIT),
        ("-100", NUMERIC_MISS_CREDIT),
        ("banana", WRONG_CREDIT),
        ("", WRONG_CREDIT),
        (None, WRONG_CREDIT),
    ],
)
def test_partial_credit_tiers(pred, credit):
    assert partial_credit(pred, "100") == credit


def test_partial_credit_with_zero_gold_stays_defined():
    assert partial_credit("0.05", "0") == WITHIN_10_PERCENT_CREDIT
    assert partial_credit("3", "0") == NUMERIC_MISS_CREDIT


PATHOLOGICAL = ("2^{2^{2^{2^{2^{100}}}}}", "7")


def test_grading_is_time_bounded_in_main_thread():
    t = time.perf_counter()
    assert answers_equal(*PATHOLOGICAL, timeout_s=2) is False
    assert time.perf_counter() - t < 10


def test_grading_is_time_bounded_in_worker_thread():
    """SIGALRM is unavailable off the main thread (servers): a worker process bounds it instead."""
    results = []

    def work():
        t = time.perf_counter()
        results.append((answers_equal(*PATHOLOGICAL, timeout_s=2), time.perf_counter() - t))
        results.append((answers_equal("\\sqrt{117}", "3\\sqrt{13}"), 0))

    th = threading.Thread(target=work)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive()
    (slow, elapsed), (fast, _) = results
    assert slow is False and elapsed < 30
    assert fast is True
