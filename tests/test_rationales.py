"""Worked solutions for SFT (`edgereason.rationales`): every generator chain written out checks out,
written solutions are read with and without their calculator annotations, and a rationale that
does not check out is named with its line and left out."""

import json
import random
import re

import pytest

from edgereason.arithmetic import arithmetic_train
from edgereason.data import load_benchmark
from edgereason.formats import get_format
from edgereason.rationales import chain_rationale, rationale_fault, rationales, written_rationale
from edgereason.work_check import WorkStatus, check_arithmetic, check_work

FMT = get_format()


def test_every_generator_chain_is_a_checked_consistent_solution():
    problems = arithmetic_train(300)
    kept, faults = rationales(problems)
    assert faults == [] and len(kept) == 300
    for r in kept:
        claims = check_arithmetic(r.reasoning)
        assert claims and all(c.holds for c in claims)
        # one `a op b = c` per operation: a 3-step problem states three computations
        assert len(claims) == len(r.problem.meta["chain"])
        check = check_work(FMT.render(r.reasoning, r.answer), r.problem.question, FMT)
        assert check.status is WorkStatus.CONSISTENT and not check.ungrounded, (r.problem.question, r.reasoning)
    # Worded per problem, not one template: many distinct wordings once numbers and names are masked.
    skeletons = {re.sub(r"\d+", "N", r.reasoning.replace(r.problem.question.split()[0], "W")) for r in kept}
    assert len(skeletons) > 50
    assert chain_rationale(problems[0]) == chain_rationale(problems[0])  # seeded by the problem's id


def test_answer_forms_ask_for_a_letter_yes_no_or_true_false_and_their_closing_line_answers_it():
    """arith-train-forms: the same chains asked for a letter, a yes/no or a true/false. The closing line turns
    the chain's value into that answer, so the answer follows from the checked reasoning, and the grader
    eval uses (ARC's letters, logic's words) reads the rendered rationale as correct and a wrong one as wrong."""
    from collections import Counter

    from edgereason.arithmetic import FORMS, with_answer_forms
    from edgereason.data import is_eval_only
    from edgereason.grading import grade_completion

    assert not is_eval_only("arith-train-forms")
    problems = with_answer_forms(arithmetic_train(200))
    assert Counter(p.meta["form"] for p in problems) == {f: 50 for f in FORMS}
    kept, faults = rationales(problems)
    assert faults == [] and len(kept) == 200
    flipped = {"yes": "no", "no": "yes", "true": "false", "false": "true"}

    def wrong_answer(form: str, gold: str) -> str:
        if form == "choice":
            return "ABCD"[("ABCD".index(gold) + 1) % 4]
        return str(int(gold) + 1) if form == "number" else flipped[gold]

    for r in kept:
        p, form = r.problem, r.problem.meta["form"]
        value = r.problem.meta["chain"][-1][3]
        assert all(c.holds for c in check_arithmetic(r.reasoning))
        if form == "choice":
            choices = p.choices or ()
            assert len(set(choices)) == 4 and choices["ABCD".index(p.gold_answer)].split()[0] == str(value)
            assert p.prompt.endswith("Answer with the letter of the correct choice.")
        elif form == "yes-no":
            bar = int(re.findall(r"more than (\d+)", p.question)[0])
            assert p.gold_answer == ("yes" if value > bar else "no") and p.question.endswith("Answer yes or no.")
        elif form == "true-false":
            claimed = int(re.findall(r"has (\d+) \D+ now\?", p.question)[0])
            assert p.gold_answer == ("true" if claimed == value else "false")
        else:
            assert p.gold_answer == str(value) and "closing" not in p.meta
        if form != "number":
            assert r.reasoning.splitlines()[-1] == p.meta["closing"] and p.gold_answer in p.meta["closing"]
        assert grade_completion(FMT.render(r.reasoning, r.answer), p.gold_answer, p.choices, FMT).strict_correct
        other = wrong_answer(form, p.gold_answer)
        assert not grade_completion(FMT.render(r.reasoning, other), p.gold_answer, p.choices, FMT).strict_correct


def test_answer_forms_refuse_a_question_the_generator_did_not_write():
    """The forms reword the generator's last sentence ("How many X does W have now?"); a question without it
    (GSM8K's, a user's file) is refused with its id instead of being rewritten into nonsense."""
    from dataclasses import replace

    from edgereason.arithmetic import in_answer_form

    p = arithmetic_train(1)[0]
    assert in_answer_form(p, "yes-no", random.Random(0)).question.endswith("Answer yes or no.")
    for other in (replace(p, id="gsm-7", question="Janet sells eggs. How much does she make?"),
                  replace(p, id="gsm-8", meta={})):
        with pytest.raises(ValueError, match=other.id):
            in_answer_form(other, "yes-no", random.Random(0))


def test_written_solutions_with_and_without_the_calculator():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert written_rationale(solution) == "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips."
    assert "<<48/2=24>>" in written_rationale(solution, "keep") and "####" not in written_rationale(solution, "keep")
    problems = load_benchmark("gsm8k-train")[:200]
    kept, faults = rationales(problems)
    assert len(kept) + len(faults) == 200 and len(kept) > 180
    assert all("<<" not in r.reasoning for r in kept)


def test_a_rationale_that_does_not_check_out_is_named_with_its_line(tmp_path):
    rows = [
        {"question": "Tom has 3 bags of 4 apples. How many apples?", "answer": "12", "solution": "3 * 4 = 12 apples."},
        {"question": "Tom has 3 bags of 4 apples. How many apples?", "answer": "12", "solution": "3 * 4 = 14 apples."},
        {"question": "Ann has 5 pens and buys 2. How many?", "answer": "8", "rationale": "5 + 2 = 7 pens."},
        {"question": "Ann has 5 pens and buys 2. How many?", "answer": "7"},
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kept, faults = rationales(load_benchmark(str(data)))
    assert [r.answer for r in kept] == ["12"]
    assert len(faults) == 3
    assert faults[0].startswith("mine-1:") and "does not compute" in faults[0] and "3 * 4 = 14" in faults[0]
    assert faults[1].startswith("mine-2:") and "not the rationale's last computed value 7" in faults[1]
    assert faults[2].startswith("mine-3:") and "no rationale" in faults[2]


@pytest.mark.parametrize("reasoning, answer, fault", [
    ("16 - 3 - 4 = 9. 9 * 2 = 18.", "18", None),
    ("10-8 = 2. 2 x 5 = 10.", "10", None),  # "10-8" is a subtraction, not 10 then -8
    ("15% * $1000 = $150.", "150", None),
    ("He has some apples.", "7", None),  # nothing to contradict it
    ("9 * 2 = 18. 18 + 1 = 19.", "18", None),  # an earlier computed value
    ("9 * 2 = 18. 18 + 1 = 19.", "20", "not the rationale's last computed value 19"),
    ("", "3", "empty rationale"),
])
def test_rationale_faults(reasoning, answer, fault):
    got = rationale_fault(reasoning, answer)
    assert (got is None) if fault is None else (fault in (got or ""))
