"""A seeded generator of verifiable logic problems (the transfer evaluation beyond math).

Five categories, each with one checkable answer:
- `propositional`: evaluate a formula over p, q, r under given truth values → "true"/"false";
- `equivalence`: are two formulas logically equivalent (truth-table checked) → "yes"/"no";
- `inference`: modus ponens / tollens vs affirming the consequent / denying the antecedent → "yes"/"no";
- `syllogism`: categorical syllogisms over nonsense terms (no world knowledge) → "yes"/"no";
- `sets`: union, intersection, difference, complement in a small universe → a set like "{1, 4, 7}".
The same seed always yields the same problems; `edgereason eval --benchmark logic` uses seed 0
(500 draws, 382 distinct questions), `train --set dataset=logic-train` seed 1 without any of the
benchmark's questions, and `logic-dev` seed 2 without either's (for choosing a recipe). Seeds alone
are not disjoint: the small categories repeat (inference has 20 questions in all).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from edgereason.problems import Problem

CATEGORIES = ("propositional", "equivalence", "inference", "syllogism", "sets")
VARS = ("p", "q", "r")

# A formula is a nested tuple: ("var", "p") | ("not", f) | (op, f, g) with op in and/or/implies/iff.
Formula = tuple


def _random_formula(rng: random.Random, depth: int) -> Formula:
    if depth == 0 or rng.random() < 0.25:
        return ("var", rng.choice(VARS))
    if rng.random() < 0.25:
        return ("not", _random_formula(rng, depth - 1))
    return (rng.choice(("and", "or", "implies", "iff")), _random_formula(rng, depth - 1), _random_formula(rng, depth - 1))


def evaluate(f: Formula, env: dict[str, bool]) -> bool:
    kind = f[0]
    if kind == "var":
        return env[f[1]]
    if kind == "not":
        return not evaluate(f[1], env)
    a, b = evaluate(f[1], env), evaluate(f[2], env)
    return {"and": a and b, "or": a or b, "implies": (not a) or b, "iff": a == b}[kind]


_SYMBOL = {"and": "∧", "or": "∨", "implies": "→", "iff": "↔"}


def show(f: Formula, top: bool = True) -> str:
    if f[0] == "var":
        return f[1]
    if f[0] == "not":
        return "¬" + show(f[1], False)
    text = f"{show(f[1], False)} {_SYMBOL[f[0]]} {show(f[2], False)}"
    return text if top else f"({text})"


def equivalent(f: Formula, g: Formula) -> bool:
    return all(
        evaluate(f, env) == evaluate(g, env)
        for values in itertools.product((True, False), repeat=len(VARS))
        for env in [dict(zip(VARS, values))]
    )


def _propositional(rng: random.Random) -> tuple[str, str]:
    f = _random_formula(rng, 3)
    while f[0] == "var":
        f = _random_formula(rng, 3)
    env = {v: rng.random() < 0.5 for v in VARS}
    parts = [f"{v} is {'true' if env[v] else 'false'}" for v in VARS]
    q = (f"Suppose {', '.join(parts[:-1])} and {parts[-1]}. Using ¬ for not, ∧ for and, ∨ for or, → for implies and ↔ for if and only if, "
         f"is the formula {show(f)} true or false? Answer true or false.")
    return q, "true" if evaluate(f, env) else "false"


# Equivalence templates: (left, right) builders over two sub-formulas a, b.
_EQUIV: list[Callable[[Formula, Formula], tuple[Formula, Formula]]] = [
    lambda a, b: (("not", ("and", a, b)), ("or", ("not", a), ("not", b))),  # De Morgan
    lambda a, b: (("not", ("or", a, b)), ("and", ("not", a), ("not", b))),
    lambda a, b: (("implies", a, b), ("implies", ("not", b), ("not", a))),  # contrapositive
    lambda a, b: (("implies", a, b), ("or", ("not", a), b)),
    lambda a, b: (("iff", a, b), ("and", ("implies", a, b), ("implies", b, a))),
]
# Tempting non-equivalences.
_NOT_EQUIV: list[Callable[[Formula, Formula], tuple[Formula, Formula]]] = [
    lambda a, b: (("not", ("and", a, b)), ("and", ("not", a), ("not", b))),
    lambda a, b: (("implies", a, b), ("implies", b, a)),  # converse
    lambda a, b: (("implies", a, b), ("implies", ("not", a), ("not", b))),  # inverse
    lambda a, b: (("or", a, b), ("and", a, b)),
    lambda a, b: (("not", ("or", a, b)), ("or", ("not", a), ("not", b))),
]


def _equivalence(rng: random.Random) -> tuple[str, str]:
    a, b = (("var", v) for v in rng.sample(VARS, 2))
    templates = _EQUIV if rng.random() < 0.5 else _NOT_EQUIV
    left, right = rng.choice(templates)(a, b)
    if rng.random() < 0.5:
        left, right = right, left
    q = (f"Using ¬ for not, ∧ for and, ∨ for or, → for implies and ↔ for if and only if: are the formulas "
         f"{show(left)} and {show(right)} logically equivalent? Answer yes or no.")
    return q, "yes" if equivalent(left, right) else "no"


_CONDITIONS = [
    ("it rains", "it does not rain", "the street is wet", "the street is not wet"),
    ("the alarm rings", "the alarm does not ring", "Mia wakes up", "Mia does not wake up"),
    ("the switch is on", "the switch is off", "the lamp glows", "the lamp does not glow"),
    ("Sam studies", "Sam does not study", "Sam passes the test", "Sam does not pass the test"),
    ("the cake is baked", "the cake is not baked", "the kitchen smells sweet", "the kitchen does not smell sweet"),
]


def _inference(rng: random.Random) -> tuple[str, str]:
    p, not_p, q, not_q = rng.choice(_CONDITIONS)
    form = rng.choice(("ponens", "tollens", "affirm", "deny"))
    fact, conclusion, valid = {
        "ponens": (p, q, True),
        "tollens": (not_q, not_p, True),
        "affirm": (q, p, False),  # affirming the consequent
        "deny": (not_p, not_q, False),  # denying the antecedent
    }[form]
    question = (f"Premise 1: If {p}, then {q}. Premise 2: {fact[0].upper() + fact[1:]}. "
                f"Does it logically follow that {conclusion}? Answer yes or no.")
    return question, "yes" if valid else "no"


_TERMS = ("wugs", "blickets", "daxes", "feps", "zorbs", "glims", "toves", "snarks")
# (premise 1, premise 2, conclusion, valid) over terms A, B, C.
_SYLLOGISMS = [
    ("All {A} are {B}", "All {B} are {C}", "all {A} are {C}", True),  # Barbara
    ("No {B} are {C}", "All {A} are {B}", "no {A} are {C}", True),  # Celarent
    ("All {B} are {C}", "Some {A} are {B}", "some {A} are {C}", True),  # Darii
    ("No {B} are {C}", "Some {A} are {B}", "some {A} are not {C}", True),  # Ferio
    ("All {A} are {B}", "All {C} are {B}", "all {A} are {C}", False),  # undistributed middle
    ("All {A} are {B}", "No {A} are {C}", "no {B} are {C}", False),  # illicit major
    ("Some {A} are {B}", "Some {B} are {C}", "some {A} are {C}", False),
    ("All {A} are {B}", "Some {B} are {C}", "some {A} are {C}", False),
]


def _syllogism(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.sample(_TERMS, 3)
    p1, p2, concl, valid = rng.choice(_SYLLOGISMS)
    fill = dict(A=a, B=b, C=c)
    q = (f"Premise 1: {p1.format(**fill)}. Premise 2: {p2.format(**fill)}. Does it necessarily follow that "
         f"{concl.format(**fill)}? Answer yes or no.")
    return q, "yes" if valid else "no"


def _set_text(s: set[int]) -> str:
    return "{" + ", ".join(str(x) for x in sorted(s)) + "}"


def _sets(rng: random.Random) -> tuple[str, str]:
    universe = set(range(1, 11))
    a = set(rng.sample(sorted(universe), rng.randint(3, 6)))
    b = set(rng.sample(sorted(universe), rng.randint(3, 6)))
    op = rng.choice(("union", "intersection", "difference", "complement"))
    result, ask = {
        "union": (a | b, "A ∪ B (the union of A and B)"),
        "intersection": (a & b, "A ∩ B (the intersection of A and B)"),
        "difference": (a - b, "A \\ B (the elements of A that are not in B)"),
        "complement": (universe - a, "the complement of A in U"),
    }[op]
    q = (f"Let U = {_set_text(universe)}, A = {_set_text(a)} and B = {_set_text(b)}. What is {ask}? "
         "Give the answer as a set in braces, e.g. {1, 2}; write {} for the empty set.")
    return q, _set_text(result)


_MAKERS = {"propositional": _propositional, "equivalence": _equivalence, "inference": _inference,
           "syllogism": _syllogism, "sets": _sets}


#: Draws in a row that found no new question before a category counts as used up: `inference` has
#: 20 distinct questions in all and `equivalence` about 114, the other three thousands.
EXHAUSTED_AFTER = 500


def generate_logic(n: int = 500, seed: int = 0, categories: tuple[str, ...] = CATEGORIES,
                   exclude: frozenset[str] | None = None) -> list[Problem]:
    """`n` problems, categories in rotation (balanced), fully determined by `seed`.

    `exclude=None` keeps every draw, repeats included: the `logic` benchmark as it has always been
    (500 draws, 382 distinct questions). With a set, its questions (another split's) and repeats are
    skipped, and a category whose questions run out leaves the rotation: a training split must not
    hold the test set's questions, and `inference` has only 20."""
    unknown = set(categories) - set(_MAKERS)
    if unknown:
        raise ValueError(f"unknown logic categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen, active, misses = set(exclude or ()), list(categories), dict.fromkeys(categories, 0)
    while len(problems) < n:
        if not active:
            raise ValueError(f"only {len(problems)} logic questions are left outside the excluded ones; asked for {n}")
        cat = active[len(problems) % len(active)]
        question, answer = _MAKERS[cat](rng)
        if exclude is not None and question in seen:
            misses[cat] += 1
            if misses[cat] >= EXHAUSTED_AFTER:
                active.remove(cat)
            continue
        misses[cat] = 0
        seen.add(question)
        problems.append(Problem(f"logic-s{seed}-{len(problems)}", question, answer, source="logic", subject=cat))
    return problems


def logic_test() -> list[Problem]:
    """The `logic` benchmark: seed 0, 500 draws (repeats kept, as it was first published)."""
    return generate_logic(500, 0)


def logic_train(n: int = 2000) -> list[Problem]:
    """The training split: seed 1, distinct questions, none of the `logic` benchmark's. Its
    `inference` questions are all in the benchmark, so it has none."""
    return generate_logic(n, 1, exclude=frozenset(p.question for p in logic_test()))


def logic_dev(n: int = 300) -> list[Problem]:
    """The development split: seed 2, disjoint from `logic` and `logic-train`, for choosing a recipe
    without looking at the benchmark."""
    return generate_logic(n, 2, exclude=frozenset(p.question for p in [*logic_test(), *logic_train()]))
