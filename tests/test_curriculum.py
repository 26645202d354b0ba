"""The pass-rate curriculum as logic: measuring, the band, the live pool, refresh and resume."""

import itertools

from edgereason.formats import get_format
from edgereason.problems import Problem
from edgereason.train.curriculum import CurriculumPool, grade, in_band, measure

FMT = get_format()
PROBLEMS = [Problem(f"p{i}", f"q{i}", str(i)) for i in range(6)]


def test_measure_grades_like_the_reward():
    # A deterministic "model": answers 2 in half its samples for p2, always for p3, never otherwise.
    def sample(problems, k):
        return [[f"<answer>{p.gold_answer if (p.id == 'p3' or (p.id == 'p2' and j % 2)) else 99}</answer>"
                 for j in range(k)] for p in problems]

    rates = measure(PROBLEMS, sample, 4, FMT)
    assert rates == {"p0": 0.0, "p1": 0.0, "p2": 0.5, "p3": 1.0, "p4": 0.0, "p5": 0.0}
    assert grade("The answer is 4. <answer>4</answer>", PROBLEMS[4], FMT)


def test_the_band_keeps_exactly_the_problems_strictly_inside_it():
    rates = {"p0": 0.0, "p1": 0.25, "p2": 0.5, "p3": 0.75, "p4": 1.0}  # p5 never measured
    assert [p.id for p in in_band(PROBLEMS, rates)] == ["p1", "p2", "p3"]
    assert [p.id for p in in_band(PROBLEMS, rates, 0.25, 0.75)] == ["p2"]
    assert [p.id for p in in_band(PROBLEMS, rates, 0.0, 0.5)] == ["p1"]


def test_pool_moves_problems_as_rollouts_measure_them_and_streams_the_active_ones():
    rates = {"p0": 0.0, "p1": 0.5, "p2": 0.5, "p3": 1.0}
    pool = CurriculumPool.build(PROBLEMS[:4], rates, lambda p: f"PROMPT {p.question}", seed=1, reserve=PROBLEMS[4:])
    pool.apply(rates, samples=4)
    assert pool.sizes() == {"active": 2, "parked": 1, "retired": 1, "unmeasured": 2}
    rows = list(itertools.islice(pool.stream(), 50))
    assert {r["id"] for r in rows} == {"p1", "p2"} and rows[0]["prompt"].startswith("PROMPT")
    pool.observe("p1", [True, True, True, True])  # one all-right group is not enough evidence to retire it
    assert "p1" in pool.active
    groups = 1
    while "p1" in pool.active and groups < 10:  # a run of them is: the measured 2/4 decays away
        pool.observe("p1", [True, True, True, True])
        groups += 1
    assert "p1" in pool.retired and 3 <= groups <= 5
    pool.observe("p0", [False, True, False, False])  # a parked problem the model now solves comes back
    assert pool.active == ["p2", "p0"]
    rows = list(itertools.islice(pool.stream(), 50))
    assert {r["id"] for r in rows} == {"p2", "p0"}  # the live stream follows the pool
    refresh = pool.to_refresh(3, step=10)
    assert {p.id for p in refresh} <= {"p1", "p3", "p4", "p5"} and len(refresh) == 3
    pool.apply({p.id: 0.5 for p in refresh})
    assert all(p.id in pool.active for p in refresh)


def test_pool_state_survives_a_restart(tmp_path):
    pool = CurriculumPool.build(PROBLEMS, {"p0": 0.5, "p1": 0.0}, str, seed=2)
    pool.observe("p0", [True, True])
    pool.save(tmp_path / "c.json")
    again = CurriculumPool({p.id: p for p in PROBLEMS}, str, seed=2)
    assert again.restore(tmp_path / "c.json")
    assert again.sizes() == pool.sizes() and again.rates == pool.rates


def test_balanced_draws_give_each_level_an_equal_share_and_favour_untied_problems():
    import collections
    import random

    easy = [Problem(f"e{i}", "q", "1", level=1) for i in range(8)]  # eight 1-step problems...
    hard = [Problem("h0", "q", "1", level=3), Problem("h1", "q", "1", level=3)]  # ...and two 3-step ones
    rates = {**{p.id: 0.5 for p in easy}, "h0": 0.5, "h1": 0.25 / 2}
    pool = CurriculumPool.build([*easy, *hard], rates, str, seed=3)
    pool.balanced = True
    rng = random.Random(0)
    counts = collections.Counter(pool.draw(rng).id for _ in range(4000))
    hard_share = (counts["h0"] + counts["h1"]) / 4000
    assert 0.45 < hard_share < 0.55  # uniform over problems would give 0.2
    # rate 0.5 has variance 0.25, rate 0.125 about 0.11: h0 comes up about twice as often as h1
    assert 1.7 < counts["h0"] / counts["h1"] < 2.8
    pool.balanced = False
    rng = random.Random(0)
    counts = collections.Counter(pool.draw(rng).id for _ in range(4000))
    assert 0.15 < (counts["h0"] + counts["h1"]) / 4000 < 0.25
