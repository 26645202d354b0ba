import math

import pytest

from edgereason.formats import get_format
from edgereason.train.rewards import (
    FORMAT_EXACT,
    FORMAT_INVALID_CAP,
    REWARD_NAMES,
    CosineLengthParams,
    accuracy_reward,
    correctness_reward,
    cosine_length_reward,
    format_reward,
    make_trl_rewards,
    process_reward,
)
from edgereason.work_check import check_arithmetic

GOOD = "<reasoning>\nShe has 16 - 3 - 4 = 9 eggs.\nShe sells them: 9 * 2 = 18.\n</reasoning>\n<answer>\n18\n</answer>"


def test_format_reward_exact_and_partial():
    assert format_reward(GOOD) == FORMAT_EXACT
    assert format_reward("") == 0.0
    assert format_reward("<reasoning>x") == 0.5
    assert format_reward("<reasoning>x</reasoning>") == 1.0
    # all four tags, in order, but text after the answer: partial credit, capped below exact
    assert format_reward(GOOD + " Hope that helps!") == FORMAT_INVALID_CAP
    # all tags, wrong order: 4 x 0.5, no order bonus
    assert format_reward("<answer>1</answer><reasoning>x</reasoning>") == 2.0


@pytest.mark.parametrize(
    "text",
    [
        GOOD + GOOD,  # tags repeated
        "<reasoning>x</reasoning> 18",  # answer outside tags
        "<answer><reasoning>x</reasoning>18</answer>",  # nested
        "<reasoning></reasoning><answer></answer>",  # empty blocks
        "<" * 1000,
    ],
)
def test_format_reward_adversarial_never_exact(text):
    r = format_reward(text)
    assert 0.0 <= r < FORMAT_EXACT


def test_format_reward_other_presets():
    think = get_format("think-answer")
    assert format_reward(think.render("2+2=4", "4"), think) == FORMAT_EXACT
    assert format_reward(GOOD, think) < FORMAT_EXACT
    assert format_reward("so \\boxed{4}", "boxed") == FORMAT_EXACT
    assert format_reward("so 4", "boxed") == 0.0


def test_accuracy_and_correctness():
    assert accuracy_reward(GOOD, "18") == 3.0
    assert accuracy_reward(GOOD.replace("\n18\n", "\n$18.00\n"), "18") == 1.5
    assert accuracy_reward(GOOD.replace("\n18\n", "\n19\n"), "18") == 0.5
    assert accuracy_reward(GOOD.replace("\n18\n", "\n90\n"), "18") == -0.5
    assert accuracy_reward("", "18") == -1.0
    assert accuracy_reward(GOOD.replace("\n18\n", "\n" + "9" * 400 + "\n"), "18") == -0.5  # huge number
    assert correctness_reward(GOOD, "18") == 1.0
    assert correctness_reward(GOOD, "19") == 0.0
    # an answer outside the tags still counts through the extraction fallbacks
    assert correctness_reward("so it is 18", "18") == 1.0


def test_arithmetic_is_re_executed():
    checks = check_arithmetic("16 - 3 - 4 = 9 eggs; 9 * 2 = 18; 7 + 5 = 13; 10 / 3 = 3.33; 5 / 0 = 1; $1,200 x 2 = $2,400")
    assert [c.holds for c in checks] == [True, True, False, True, False, True]
    assert process_reward(GOOD) > process_reward(GOOD.replace("= 18", "= 20"))


def test_process_reward_penalises_loops_and_handles_empty():
    loop = "<reasoning>\n" + "We add 2 and 2.\n" * 6 + "</reasoning><answer>4</answer>"
    assert process_reward(loop) < process_reward(GOOD)
    assert process_reward("") == 0.0
    assert process_reward("<reasoning></reasoning><answer>1</answer>") == 0.0


def test_cosine_length_reward_shape():
    p = CosineLengthParams(max_length=100)
    assert cosine_length_reward(True, 0, p) == pytest.approx(1.0)
    assert cosine_length_reward(True, 100, p) == pytest.approx(0.5)
    assert cosine_length_reward(False, 0, p) == pytest.approx(-1.0)
    assert cosine_length_reward(False, 100, p) == pytest.approx(-0.5)
    assert cosine_length_reward(True, 500, p) == pytest.approx(0.5)  # clamped past max_length
    correct = [cosine_length_reward(True, n, p) for n in range(0, 101, 10)]
    wrong = [cosine_length_reward(False, n, p) for n in range(0, 101, 10)]
    assert correct == sorted(correct, reverse=True) and wrong == sorted(wrong)
    assert min(correct) > max(wrong)


def test_trl_adapters_apply_prefix_and_names():
    seen = []
    fmt = get_format()
    funcs = make_trl_rewards(fmt, prefix=fmt.prefill, on_batch=lambda p, t, s, **_: seen.append((t, s)))
    assert tuple(f.__name__ for f in funcs) == REWARD_NAMES
    completion = GOOD[len(fmt.prefill):]  # what the model generated after the prefill
    kw = {"answer": ["18", "5"], "prompts": ["p1", "p2"], "completion_ids": [[1] * 10, [1] * 50]}
    out = {f.__name__: f([completion, completion], **kw) for f in funcs}
    assert out["format"] == [3.0, 3.0]
    assert out["accuracy"] == [3.0, -0.5]
    assert out["correctness"] == [1.0, 0.0]
    assert out["cosine_length"][0] > 0 > out["cosine_length"][1]
    assert seen and seen[0][0][0].startswith("<reasoning>")
    # conversational completions are read too
    assert funcs[0]([[{"role": "assistant", "content": completion}]]) == [3.0]
    assert all(math.isfinite(x) for v in out.values() for x in v)


def test_steps_reward_credits_each_intermediate_value_the_reasoning_states():
    from edgereason.arithmetic import generate_arithmetic
    from edgereason.train.rewards import steps_reward

    # "Omar has 25 balloons, loses 17, then x3": the full chain states 8 and 24
    p = generate_arithmetic(2, 0)[1]
    assert p.meta["steps"] == [8, 24] and p.gold_answer == "24"
    full = "<reasoning>\n25 - 17 = 8. Then 8 * 3 = 24.\n</reasoning>\n<answer>24</answer>"
    shortcut = "<reasoning>\n25 * 3 = 75.\n</reasoning>\n<answer>75</answer>"
    half = "<reasoning>\n25 - 17 = 8, and 8 + 3 = 11.\n</reasoning>\n<answer>11</answer>"
    assert steps_reward(full, p.meta["steps"]) == 1.0
    assert steps_reward(shortcut, p.meta["steps"]) == 0.0
    assert steps_reward(half, p.meta["steps"]) == 0.5
    assert steps_reward("<reasoning>\nx\n</reasoning>\n<answer>24</answer>", ["24"]) == 0.0  # the answer field is not reasoning
    assert steps_reward(full, []) == 0.0  # nothing known: no signal, the same for every completion
    assert steps_reward("<reasoning>\n25 - 17 = 8. Then 8 * 3 = 24 and so on", p.meta["steps"]) == 0.0  # never closed
    # through TRL's adapter, from the dataset's comma-separated column
    steps_fn = make_trl_rewards(get_format())[REWARD_NAMES.index("steps")]
    assert steps_fn([full, shortcut, full], steps=["8,24", "8,24", ""]) == [1.0, 0.0, 0.0]


def test_derived_reward_pays_only_for_an_answer_the_reasoning_computes():
    from edgereason.train.rewards import derived_reward

    computed = "<reasoning>\n25 - 17 = 8. Then 8 * 3 = 24.\n</reasoning>\n<answer>24</answer>"
    guessed = "<reasoning>\nOmar has 24 balloons.\n</reasoning>\n<answer>24</answer>"
    miscounted = "<reasoning>\n8 * 3 = 25, so 24.\n</reasoning>\n<answer>24</answer>"  # the claim does not hold
    assert derived_reward(computed, "24") == 1.0
    assert derived_reward(guessed, "24") == 0.0  # right number, no derivation
    assert derived_reward(miscounted, "24") == 0.0
    assert derived_reward(computed, "25") == 0.0  # derived but wrong
    assert derived_reward("<reasoning>\n6 / 4 = 1.5\n</reasoning>\n<answer>1.5</answer>", "3/2") == 1.0
    assert derived_reward("<reasoning>\n25 - 17 = 8. 8 * 3 = 24", "24") == 0.0  # never closed, no answer
    # a non-numeric gold needs only correctness
    assert derived_reward("<reasoning>\nAll cats purr.\n</reasoning>\n<answer>yes</answer>", "yes") == 1.0
    fn = make_trl_rewards(get_format())[REWARD_NAMES.index("derived")]
    assert fn([computed, guessed], answer=["24", "24"]) == [1.0, 0.0]


def test_checked_reward_pays_only_for_a_chain_whose_every_step_computes():
    from edgereason.train.rewards import checked_reward, derived_reward

    # the GRPO sample that showed the gap: two false steps, then a true last step onto the right answer
    lucky = ("<reasoning>\n19 - 14 = 3 stamps are left.\n3 - 4 = 1 stamps are left.\n1 * 3 = 3 stamps.\n"
             "</reasoning>\n<answer>\n3\n</answer>")
    sound = "<reasoning>\n19 - 14 = 5 are left.\n5 - 4 = 1 is left.\n1 * 3 = 3 stamps.\n</reasoning>\n<answer>\n3\n</answer>"
    assert derived_reward(lucky, "3") == 1.0 and checked_reward(lucky, "3") == 0.0
    assert checked_reward(sound, "3") == 1.0
    assert checked_reward(sound, "4") == 0.0  # sound but wrong
    assert checked_reward("<reasoning>\nOmar has 3 stamps.\n</reasoning>\n<answer>3</answer>", "3") == 0.0  # no step shown
    assert checked_reward("<reasoning>\n19 - 14 = 5. 5 - 4 = 1. 1 * 3 = 3", "3") == 0.0  # never closed
    assert checked_reward("<reasoning>\nAll cats purr.\n</reasoning>\n<answer>yes</answer>", "yes") == 1.0
    fn = make_trl_rewards(get_format())[REWARD_NAMES.index("checked")]
    assert fn([lucky, sound], answer=["3", "3"]) == [0.0, 1.0]


def test_every_reward_stays_within_its_registered_range_and_the_ceiling_is_reached():
    from edgereason.train.rewards import REWARDS, reward_ceiling

    fmt = get_format()
    funcs = {f.__name__: f for f in make_trl_rewards(fmt)}
    assert list(funcs) == list(REWARDS)
    texts = [GOOD, GOOD + " Hope that helps!", "", "<reasoning>x", "<answer>5</answer>", "18",
             "<reasoning>\n2 + 2 = 5.\n2 + 2 = 5.\n2 + 2 = 5.\n</reasoning>\n<answer>\n5\n</answer>",
             "<reasoning>\n16 - 3 - 4 = 9\n9 * 2 = 18\nSo 18.\nDone.\n</reasoning>\n<answer>\n18\n</answer>"]
    kw = {"answer": ["18"] * len(texts), "steps": ["9,18"] * len(texts), "completion_ids": [[1] * 40] * len(texts)}
    best = {}
    for name, fn in funcs.items():
        spec, scores = REWARDS.get(name), fn(texts, **kw)
        assert all(spec.low <= s <= spec.ceiling() for s in scores), (name, scores)
        best[name] = max(scores)
    # the ceiling the saturation detector uses is reachable: the best completion earns every component's top
    for name in ("format", "accuracy", "correctness", "steps", "derived", "process"):
        assert best[name] == REWARDS.get(name).ceiling(), name
    assert reward_ceiling({"format": 0.5, "derived": 2.0}) == 0.5 * FORMAT_EXACT + 2.0
