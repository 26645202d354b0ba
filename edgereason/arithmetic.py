"""A seeded generator of arithmetic word problems with one, two and three steps.

The curriculum's floor: problems a 0.1B model sometimes solves, so GRPO has a signal before it can
touch GSM8K. Each problem is built from a chain of operations on small whole numbers (every
intermediate result a whole number >= 0), worded as a short story; the answer is the chain's value.
`subject` is "1-step", "2-step" or "3-step" (reported separately by eval); `meta["steps"]` lists
the value after each operation, the answer last (what a complete solution computes on its way);
`meta["chain"]` the operations themselves, [a, op, b, result] each, and `meta["grouped"]` whether the
story opens with groups (its first link is then groups * each): what `edgereason.rationales` writes
out as a worked solution.

The same seed always gives the same problems. `arith` (seed 0, 600 problems, 200 of each depth) is
an evaluation benchmark; `arith-train` (seed 1) is for training and never contains a question of
`arith` (checked as the problems are drawn). `arith-dev` (seed 2, 300 problems, disjoint from both)
picks a training checkpoint without looking at the benchmark.

`arith-train-forms` asks the same training problems in four answer forms, a quarter each: the number,
a lettered choice among four, a yes/no comparison and a true/false claim. A model trained on numbers
alone learns to close its reasoning and answer only after a number; asked for a letter or a yes/no
it stops inside its reasoning (sftC: 14% of ARC-Easy and 18% of logic answers out of format). Each
form's rationale ends with a line that turns the chain's value into the answer asked for
(`meta["closing"]`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgereason.problems import Problem

NAMES = ("Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Ivy", "Raj", "Zoe", "Leo", "Nora", "Sam", "Ada")
THINGS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "shells", "cards", "coins", "balloons",
          "stamps", "beads", "toy cars", "flowers", "eggs", "buttons")
CONTAINERS = ("boxes", "bags", "jars", "baskets", "packs", "crates")
DEPTHS = (1, 2, 3)


@dataclass(frozen=True)
class _Step:
    text: str  # a sentence applying the operation to the running amount
    apply: Callable[[int], int]
    op: str = ""  # "+", "-", "*", "/": what a written solution computes (running amount op n)
    n: int = 0


def _add(rng: random.Random, who: str, what: str, amount: int) -> _Step:
    n = rng.randint(2, 30)
    verb = rng.choice((f"{who} buys {n} more {what}", f"{who} finds {n} more {what}",
                       f"A friend gives {who} {n} {what}", f"{who} gets {n} more {what} as a gift"))
    return _Step(verb + ".", lambda x: x + n, "+", n)


def _sub(rng: random.Random, who: str, what: str, amount: int) -> _Step | None:
    if amount < 3:
        return None
    n = rng.randint(1, amount - 1)
    verb = rng.choice((f"{who} gives away {n} {what}", f"{who} loses {n} {what}", f"{who} uses {n} {what}",
                       f"{who} sells {n} {what}"))
    return _Step(verb + ".", lambda x: x - n, "-", n)


def _mul(rng: random.Random, who: str, what: str, amount: int) -> _Step | None:
    if amount > 40:
        return None
    n = rng.randint(2, 5)
    verb = rng.choice((f"Then the number of {what} {who} has is multiplied by {n}",
                       f"{who} gets {n - 1} more groups of the same size, so {who} has {n} times as many {what}"))
    return _Step(verb + ".", lambda x: x * n, "*", n)


def _div(rng: random.Random, who: str, what: str, amount: int) -> _Step | None:
    factors = [d for d in range(2, 7) if amount % d == 0 and amount // d >= 1]
    if not factors:
        return None
    d = rng.choice(factors)
    verb = rng.choice((f"{who} splits the {what} into {d} equal piles and keeps one pile",
                       f"{who} puts the {what} into {d} equal groups and keeps one group"))
    return _Step(verb + ".", lambda x: x // d, "/", d)


_OPS = (_add, _sub, _mul, _div)
# The generator's last sentence, which in_answer_form rewords: the story, then what is counted and whose.
_GENERATOR_ASK = re.compile(r"(.*) How many (.+?) does (.+) have now\?", re.DOTALL)


def _start(rng: random.Random, who: str, what: str) -> tuple[str, int, tuple[int, int] | None]:
    """The opening sentence, the amount, and for a grouped start its (groups, each)."""
    if rng.random() < 0.3:
        groups, each = rng.randint(2, 6), rng.randint(2, 9)
        box = rng.choice(CONTAINERS)
        return f"{who} has {groups} {box} with {each} {what} in each.", groups * each, (groups, each)
    n = rng.randint(3, 40)
    return f"{who} has {n} {what}.", n, None


def _problem(rng: random.Random, depth: int) -> tuple[str, int, list[int], list[list[int | str]]]:
    """A story of `depth` operations (a grouped start counts as one), its whole-number answer, the
    value after each operation, and the chain a solution computes: [[a, op, b, result], ...] (a
    grouped start is its first link, groups * each)."""
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    while True:
        start, amount, grouped = _start(rng, who, what)
        steps = 1 if grouped else 0
        values = [amount] if steps else []
        chain: list[list[int | str]] = [[grouped[0], "*", grouped[1], amount]] if grouped else []
        sentences = [start]
        while steps < depth:
            step = rng.choice(_OPS)(rng, who, what, amount)
            if step is None:
                continue
            before, amount = amount, step.apply(amount)
            values.append(amount)
            chain.append([before, step.op, step.n, amount])
            sentences.append(step.text)
            steps += 1
        if steps == depth and 0 <= amount <= 1000:
            break
    sentences.append(f"How many {what} does {who} have now?")
    return " ".join(sentences), amount, values, chain


def generate_arithmetic(n: int = 600, seed: int = 0, depths: tuple[int, ...] = DEPTHS,
                        exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """`n` problems, depths in rotation (balanced), fully determined by `seed`; questions in
    `exclude` (another split's) are skipped, as are repeats."""
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen = set(exclude)
    while len(problems) < n:
        depth = depths[len(problems) % len(depths)]
        question, answer, values, chain = _problem(rng, depth)
        grouped = len(values) == len(chain) and " in each" in question.split(".")[0]
        if question in seen:
            continue
        seen.add(question)
        problems.append(Problem(f"arith-s{seed}-{len(problems)}", question, str(answer), source="arith",
                                subject=f"{depth}-step", level=depth, meta={"steps": values, "chain": chain,
                                                                             "grouped": grouped}))
    return problems


FORMS = ("number", "choice", "yes-no", "true-false")


def _distractors(rng: random.Random, answer: int, values: list[int]) -> list[int]:
    """Three wrong options a reader could reach: an intermediate value, an off-by-a-step, a slip."""
    pool = {v for v in values[:-1] if v != answer}
    pool |= {answer + d for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0}
    pool.discard(answer)
    return rng.sample(sorted(pool), 3)


def in_answer_form(p: Problem, form: str, rng: random.Random) -> Problem:
    """`p` (a generator problem) asked in `form`, with the closing line its rationale ends with."""
    asked = _GENERATOR_ASK.fullmatch(p.question)
    if asked is None or "steps" not in p.meta:
        # The forms reword the generator's own last sentence; another question would be garbled silently.
        raise ValueError(f"{p.id}: not a generator problem (no final 'How many X does W have now?' and step "
                         "values), so it cannot be asked in another answer form")
    stem, what, who = asked.groups()
    answer = int(p.gold_answer)
    meta = dict(p.meta, form=form)
    if form == "number":
        return replace(p, meta=meta)
    if form == "choice":
        options = [answer, *_distractors(rng, answer, list(p.meta["steps"]))]
        rng.shuffle(options)
        letter = "ABCD"[options.index(answer)]
        meta["closing"] = f"So the answer is {letter}) {answer} {what}."
        return replace(p, id=f"{p.id}-choice", gold_answer=letter, choices=tuple(f"{n} {what}" for n in options),
                       meta=meta)
    if form == "yes-no":
        bar = max(0, answer + rng.choice((-5, -2, -1, 1, 2, 5)))
        more = answer > bar
        meta["closing"] = f"{answer} is {'' if more else 'not '}more than {bar}, so {'yes' if more else 'no'}."
        return replace(p, id=f"{p.id}-yes-no", question=f"{stem} Does {who} have more than {bar} {what} now? Answer yes "
                       "or no.", gold_answer="yes" if more else "no", meta=meta)
    claimed = answer if rng.random() < 0.5 else rng.choice(_distractors(rng, answer, list(p.meta["steps"])))
    meta["closing"] = (f"{who} has {answer} {what}, so it is true." if claimed == answer
                       else f"{who} has {answer} {what}, not {claimed}, so it is false.")
    return replace(p, id=f"{p.id}-true-false", question=f"{stem} Is it true that {who} has {claimed} {what} now? "
                   "Answer true or false.", gold_answer="true" if claimed == answer else "false", meta=meta)


def with_answer_forms(problems: list[Problem], seed: int = 3) -> list[Problem]:
    """Each problem in one of FORMS, in rotation (a quarter each), options and bars drawn from `seed`."""
    rng = random.Random(seed)
    return [in_answer_form(p, FORMS[i % len(FORMS)], rng) for i, p in enumerate(problems)]


def arithmetic_test() -> list[Problem]:
    """The `arith` benchmark: seed 0, 600 problems."""
    return generate_arithmetic(600, 0)


def arithmetic_train(n: int = 5000) -> list[Problem]:
    """The training split: seed 1, with every question of the `arith` benchmark excluded."""
    return generate_arithmetic(n, 1, exclude=frozenset(p.question for p in arithmetic_test()))


def arithmetic_dev(n: int = 300) -> list[Problem]:
    """The development split: seed 2, disjoint from `arith` and `arith-train`, for choosing among a
    run's checkpoints so that the benchmark's score is not also the selection criterion."""
    seen = frozenset(p.question for p in [*arithmetic_test(), *arithmetic_train()])
    return generate_arithmetic(n, 2, exclude=seen)
