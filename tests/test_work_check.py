"""Voting that checks the work: each sample's own arithmetic re-executed (`edgereason.work_check`),
the vote modes over it (`edgereason.voting`), and the engine voting with weights and early stop on
the scripted backend. Samples with known faults, no model."""

import pytest

from edgereason.backends.scripted import ScriptedBackend
from edgereason.formats import get_format
from edgereason.serve.config import EngineLimits
from edgereason.serve.engine import ReasoningEngine
from edgereason.voting import VoteMode, VoteTally, vote
from edgereason.work_check import STATUS_SCORE, UNGROUNDED_FACTOR, WorkStatus, check_work

FMT = get_format()
QUESTION = "Tom has 3 boxes with 4 apples in each. He eats 2 apples. How many apples are left?"


def sample(reasoning: str, answer: str) -> str:
    return FMT.render(reasoning, answer)


RIGHT = sample("3 * 4 = 12 apples. 12 - 2 = 10 apples left.", "10")
WRONG_PRODUCT = sample("3 * 4 = 14 apples. 14 - 2 = 12 apples left.", "12")
NOT_DERIVED = sample("3 * 4 = 12 apples.", "4")  # a number from the question, not the chain's result
FROM_NOWHERE = sample("3 * 4 = 12. 12 - 5 = 7.", "7")  # 5 is in neither the question nor the chain
NO_ARITHMETIC = sample("He has some apples left.", "10")


def test_each_kind_of_fault_is_named():
    right = check_work(RIGHT, QUESTION, FMT)
    assert right.status is WorkStatus.CONSISTENT and right.score == 1.0 and right.claims == 2 and right.derived
    wrong = check_work(WRONG_PRODUCT, QUESTION, FMT)
    assert wrong.status is WorkStatus.WRONG_ARITHMETIC and wrong.score == STATUS_SCORE[WorkStatus.WRONG_ARITHMETIC]
    assert wrong.wrong == ["3 * 4 = 14"] and any("3 * 4 = 14" in r for r in wrong.reasons)
    guess = check_work(NOT_DERIVED, QUESTION, FMT)
    assert guess.status is WorkStatus.NOT_DERIVED and not guess.derived
    nowhere = check_work(FROM_NOWHERE, QUESTION, FMT)
    assert nowhere.status is WorkStatus.CONSISTENT and nowhere.ungrounded == ["5"]
    assert nowhere.score == pytest.approx(UNGROUNDED_FACTOR)
    # Nothing to check is not evidence of a fault: unchecked, between wrong and right.
    unchecked = check_work(NO_ARITHMETIC, QUESTION, FMT)
    assert unchecked.status is WorkStatus.UNCHECKED
    assert STATUS_SCORE[WorkStatus.WRONG_ARITHMETIC] < unchecked.score < right.score
    assert check_work("no tags at all", QUESTION, FMT).status is WorkStatus.NO_ANSWER


def test_numbers_in_words_and_units_are_grounded():
    q = "A dozen eggs cost three dollars. How much do two dozen cost?"
    ok = check_work(sample("12 * 2 = 24 eggs. 3 * 2 = 6 dollars.", "6"), q, FMT)
    assert ok.status is WorkStatus.CONSISTENT and ok.ungrounded == []
    # Without a question the numbers are not grounded, only re-executed.
    assert check_work(FROM_NOWHERE, None, FMT).ungrounded == []


def test_the_calculator_recomputes_a_miscomputed_chain():
    c = check_work(WRONG_PRODUCT, QUESTION, FMT)
    assert c.repaired_answer == "10"  # 3 * 4 = 12, then 12 - 2 = 10
    assert check_work(RIGHT, QUESTION, FMT).repaired_answer is None
    # A wrong claim the answer does not rest on repairs nothing.
    side = check_work(sample("5 + 5 = 11. 3 * 4 = 12. 12 - 2 = 10.", "10"), QUESTION, FMT)
    assert side.status is WorkStatus.WRONG_ARITHMETIC and side.repaired_answer is None


def test_verified_vote_picks_the_consistent_answer_where_majority_picks_the_wrong_one():
    texts = [WRONG_PRODUCT, WRONG_PRODUCT, RIGHT, NOT_DERIVED, WRONG_PRODUCT]
    answers = [FMT.parse(t).answer for t in texts]
    checks = [check_work(t, QUESTION, FMT) for t in texts]
    assert vote("majority", answers).answer == "12"
    verified = vote("verified", answers, checks=checks)
    assert verified.answer == "10" and verified.mode is VoteMode.VERIFIED and verified.winner == 2
    assert verified.groups[0].weight == pytest.approx(1.0)
    assert vote("best", answers, checks=checks).answer == "10"
    # The calculator turns the three miscomputed samples into votes for 10.
    repaired = vote("repaired", answers, checks=checks)
    assert repaired.answer == "10" and repaired.groups[0].count == 4
    assert vote("verified", answers, checks=checks).to_dict()["mode"] == "verified"
    with pytest.raises(ValueError, match="work check"):
        vote("verified", answers)
    with pytest.raises(ValueError):
        vote("loudest", answers)


def test_best_breaks_equal_scores_by_votes():
    texts = [sample("3 * 4 = 12. 12 - 2 = 10.", "10"), sample("3 + 4 = 7. 7 - 2 = 5.", "5"),
             sample("3 + 4 = 7. 7 - 2 = 5.", "5")]
    answers = [FMT.parse(t).answer for t in texts]
    checks = [check_work(t, QUESTION, FMT) for t in texts]
    assert all(c.score == 1.0 for c in checks)
    result = vote("best", answers, checks=checks)
    assert result.answer == "5" and not result.tie


def test_weighted_early_stop_once_the_weighted_leader_is_safe():
    weighted, counted = VoteTally(4), VoteTally(4)
    for answer, weight in (("12", 0.05), ("10", 1.0)):
        assert not weighted.add(answer, weight=weight)
        assert not counted.add(answer)
    # "10" leads 2.0 to 0.05 with one sample (at most 1.0) to come: decided. Counted, 2 to 1 is not.
    assert weighted.add("10", weight=1.0)
    assert not counted.add("10")


async def test_engine_votes_with_checks_and_reports_each_sample():
    texts = [WRONG_PRODUCT, WRONG_PRODUCT, RIGHT, WRONG_PRODUCT]
    prefill = FMT.prefill

    def script(prompt: str, seed: int) -> str:
        return texts[seed % 4].removeprefix(prefill)

    e = ReasoningEngine(ScriptedBackend(script), FMT, EngineLimits())
    p = e.params(True, 128, 0.7, 1.0, 0, [])
    majority = await e.vote("q", p, 4, early_stop=False)
    assert majority.vote.answer == "12" and majority.checks == []
    verified = await e.vote("q", p, 4, early_stop=False, mode=VoteMode.VERIFIED, question=QUESTION)
    assert verified.vote.answer == "10" and verified.answer is not None and verified.answer.content == "10"
    assert [c.status for c in verified.checks] == [WorkStatus.WRONG_ARITHMETIC] * 2 + [WorkStatus.CONSISTENT,
                                                                                      WorkStatus.WRONG_ARITHMETIC]
    assert verified.note is None


async def test_a_format_without_a_reasoning_section_falls_back_to_majority():
    boxed = get_format("boxed")
    e = ReasoningEngine(ScriptedBackend("so the answer is \\boxed{4}"), boxed, EngineLimits())
    p = e.params(True, 64, 0.7, 1.0, 0, [])
    voted = await e.vote("q", p, 2, early_stop=False, mode=VoteMode.VERIFIED)
    assert voted.vote.mode is VoteMode.MAJORITY and voted.note and "fell back to majority" in voted.note

