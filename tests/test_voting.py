from edgereason.voting import decided, group_answers, majority_vote


def test_equivalent_answers_group_together():
    answers = ["18", "$18.00", "20", "18 dollars", None, "\\frac{36}{2}", "20.0"]
    groups = group_answers(answers)
    assert [(g.answer, g.members) for g in groups] == [("18", [0, 1, 3, 5]), ("20", [2, 6])]


def test_majority_share_and_invalid_samples():
    answers = ["7", "7", "8", "7", "9", None]
    valid = [True, True, True, False, True, True]
    v = majority_vote(answers, valid)
    assert v.answer == "7" and v.winner == 0
    assert v.invalid == [3, 5] and v.total == 6
    assert v.share == 2 / 4  # two valid "7" among four usable samples
    assert not v.tie
    d = v.to_dict()
    assert d["votes"][0] == {"answer": "7", "count": 2, "samples": [0, 1]} and d["invalid"] == 2


def test_ties_go_to_the_earliest_answer_and_are_reported():
    v = majority_vote(["3", "4", "4", "3"])
    assert v.answer == "3" and v.tie and v.share == 0.5


def test_no_usable_answers():
    v = majority_vote([None, "", None])
    assert v.answer is None and v.winner is None and v.share == 0.0 and len(v.invalid) == 3


def test_early_stop_only_when_the_lead_is_safe():
    assert decided([5, 1], remaining=2)  # 5 > 1 + 2
    assert not decided([5, 1], remaining=4)  # runner-up could reach 5: a tie is still possible
    assert decided([3], remaining=2)
    assert not decided([], remaining=0)
    assert not decided([2, 2], remaining=0)
