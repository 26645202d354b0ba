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
    # unbounded, this input runs for hours; the bound is 30x the timeout so a busy machine cannot fail it
    assert time.perf_counter() - t < 60


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


# ---- strict and flexible (eval) ----------------------------------------------------------------

from edgereason.grading import answer_type, flexible_answer, grade_completion, strict_answer  # noqa: E402


def test_answer_types_from_the_gold():
    assert [answer_type(g) for g in ("18", "0.75", "\\frac{1}{2}", "yes", "False", "{1, 3}", "x^2+1")] == [
        "number", "number", "number", "yes_no", "true_false", "set", "math"]
    assert answer_type("B", ["a", "b"]) == "choice"


def test_strict_needs_the_answer_field_and_flexible_does_not():
    tagged = "<reasoning>\n5 + 6 = 11\n</reasoning>\n<answer>\n11\n</answer>"
    free = "5 + 6 = 11, so she has 11."
    assert strict_answer(tagged) == "11" and strict_answer(free) is None
    assert flexible_answer(tagged, "number") == "11" == flexible_answer(free, "number")
    v = grade_completion(free, "11")
    assert (v.strict_correct, v.flexible_correct) == (False, True)
    # The same rule whatever the format: a boxed completion is read by both.
    boxed = "We get $\\boxed{11}$."
    assert strict_answer(boxed, "boxed") == "11" and flexible_answer(boxed, "number") == "11"


@pytest.mark.parametrize("text, kind, choices, expected", [
    ("The answer is 18 dollars. Check: 18 - 9 = 9.", "number", None, "18"),
    ("#### 1,200", "number", None, "1,200"),
    ("so she eats 3/4 of it", "number", None, "3/4"),
    ("No, it does not follow.", "yes_no", None, "no"),
    ("It is true that p, so the formula is FALSE.", "true_false", None, "false"),
    ("A ∪ B = {1, 4}", "set", None, "{1, 4}"),
    ("I think (C) is right", "choice", ["x", "y", "z"], "C"),
    ("Plants need sunlight to grow.", "choice", ["water", "sunlight"], "B"),
    ("nothing here", "number", None, None),
])
def test_flexible_rules(text, kind, choices, expected):
    assert flexible_answer(text, kind, choices) == expected


def test_the_grader_agrees_with_every_hand_labelled_case():
    from edgereason.evalsuite.grader_bench import run_grader_bench

    cases = run_grader_bench()
    assert len(cases) >= 25 and {c["kind"] for c in cases} >= {"number", "yes_no", "true_false", "set", "choice"}
    assert [c["note"] for c in cases if not c["agrees"]] == []
