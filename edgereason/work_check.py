"""Checking a sample's own work, from its text alone: the one source for the rewards that re-execute
arithmetic (`train/rewards.py`) and for the vote modes that weigh samples by it (`voting.py`).

A small model's reasoning states its arithmetic (`12 + 5 = 17`). Each such claim is re-executed
exactly; the final answer is checked against the values the chain computed; the numbers a claim uses
are looked up in the question and in the chain's earlier results. No model, no reference answer.

`check_work(text, question, fmt)` returns a `WorkCheck`: a status, a score in [0, 1] (the weight a
`verified` vote gives the sample) and the reasons, and, where a claim was miscomputed, the answer the
chain gives once every claim is recomputed (`repaired_answer`, the calculator; never used silently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from edgereason.formats import ReasoningFormat, get_format
from edgereason.grading import extract_answer

# ---- arithmetic claims -----------------------------------------------------------------------

NUM = r"-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?"  #: a number as reasoning writes it: -3, $1,200, 2.5, .4, 40%
_OP = r"[-+*/x×÷−]"  # − is Unicode MINUS SIGN, as typeset solutions write it
_ARITH = re.compile(rf"(?P<expr>{NUM}(?:\s*{_OP}\s*{NUM})+)\s*=\s*(?P<c>{NUM})")
_NUMBER = re.compile(NUM)
_OPERATOR = re.compile(_OP)
#: A claim holds when its stated result is within this share of the true value (10 / 3 = 3.33).
TOLERANCE = Fraction(1, 100)


def to_number(s: str) -> Fraction | None:
    """The exact value of a number as written ("$1,200" -> 1200, "40%" -> 40), or None."""
    s = s.replace("$", "").replace(",", "").rstrip("%")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _close(value: Fraction, claimed: Fraction) -> bool:
    return abs(value - claimed) <= abs(value) * TOLERANCE if value != 0 else claimed == 0


def _operand(token: str) -> Fraction | None:
    """A number inside an expression: a percentage is its fraction (15% * 1000 = 150)."""
    v = to_number(token)
    return v / 100 if v is not None and token.endswith("%") else v


def _tokens(expr: str) -> tuple[list[Fraction], list[str]] | None:
    """The numbers and operators of `a op b [op c ...]`, or None when it does not read as one.
    Numbers and operators alternate: a "-" where an operator is due is a minus between two numbers
    ("10-8"), not the sign of the second (a plain findall read "10", "-8": no operator)."""
    values: list[Fraction] = []
    ops: list[str] = []
    pos, text = 0, expr.strip()
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        want_number = len(values) == len(ops)
        m = (_NUMBER if want_number else _OPERATOR).match(text, pos)
        if m is None:
            return None
        if want_number:
            v = _operand(m.group(0))
            if v is None:
                return None
            values.append(v)
        else:
            ops.append({"x": "*", "×": "*", "÷": "/", "−": "-"}.get(m.group(0), m.group(0)))
        pos = m.end()
    if not values or len(ops) != len(values) - 1:
        return None
    return values, ops


def _evaluate(expr: str, substitute: dict[Fraction, Fraction] | None = None) -> Fraction | None:
    """Exact value of a chain like `16 - 3 - 4` or `$1,200 x 2` (usual precedence), or None.
    `substitute` replaces operands (the calculator: a miscomputed value by its true one)."""
    parsed = _tokens(expr)
    if parsed is None:
        return None
    values, ops = parsed
    if substitute:
        values = [substitute.get(v, v) for v in values]
    # multiplication and division first, then addition and subtraction, left to right
    terms, signs = [values[0]], []
    for op, v in zip(ops, values[1:]):
        if op == "*":
            terms[-1] *= v
        elif op == "/":
            if v == 0:
                return None
            terms[-1] /= v
        else:
            signs.append(op)
            terms.append(v)
    total = terms[0]
    for op, v in zip(signs, terms[1:]):
        total = total + v if op == "+" else total - v
    return total


@dataclass(frozen=True)
class ArithmeticCheck:
    claim: str
    holds: bool
    result: Fraction | None = None  #: the claimed right-hand side d
    value: Fraction | None = None  #: the left-hand side's true value (None: not computable, e.g. / 0)
    operands: tuple[Fraction, ...] = ()


def check_arithmetic(reasoning: str) -> list[ArithmeticCheck]:
    """Re-execute every `a op b [op c ...] = d` claim in the reasoning (ops + - * / x × ÷).

    A claim holds when d equals the left side within 1% (reasoning rounds: 10 / 3 = 3.33);
    a division by zero never holds."""
    checks = []
    for m in _ARITH.finditer(reasoning):
        value, claimed = _evaluate(m["expr"]), to_number(m["c"])
        if claimed is None:
            continue
        # "= 40%" states a percentage: the left side's fraction 0.4 holds it.
        holds = value is not None and (_close(value, claimed) or (m["c"].endswith("%") and _close(value * 100, claimed)))
        parsed = _tokens(m["expr"])
        operands = tuple(abs(v) for v in parsed[0]) if parsed else ()
        checks.append(ArithmeticCheck(m.group(0), holds, claimed, value, operands))
    return checks


# ---- the whole sample ------------------------------------------------------------------------

#: Constants a solution may use without the question stating them: units (60 minutes, 24 hours,
#: 7 days, 12 months or a dozen, 52 weeks, 365 days, 100 cents or percent, 1000) and halving/doubling.
IMPLICIT_CONSTANTS = frozenset(Fraction(n) for n in (1, 2, 3, 4, 7, 10, 12, 24, 30, 52, 60, 100, 365, 1000))
#: Numbers a question writes as words.
WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "twice": 2, "double": 2, "half": 2, "triple": 3, "thrice": 3, "quarter": 4, "dozen": 12,
}


class WorkStatus(StrEnum):
    CONSISTENT = "consistent"  #: every claim holds and the answer is a value the chain computed
    WRONG_ARITHMETIC = "wrong_arithmetic"  #: a stated result is not what its left side computes
    NOT_DERIVED = "not_derived"  #: the claims hold, but the answer is none of the values they compute
    UNCHECKED = "unchecked"  #: no claim to re-execute (or a non-numeric answer): nothing known either way
    NO_ANSWER = "no_answer"  #: format invalid or no answer: the sample does not vote


#: The weight each status gives a sample in a `verified` vote. A miscomputed chain weighs ~0; an
#: unchecked sample sits between (the checker knowing nothing is not evidence against it); an answer
#: the chain does not compute is most often a number copied from the question (a guess).
STATUS_SCORE = {
    WorkStatus.CONSISTENT: 1.0,
    WorkStatus.WRONG_ARITHMETIC: 0.05,
    WorkStatus.NOT_DERIVED: 0.3,
    WorkStatus.UNCHECKED: 0.5,
    WorkStatus.NO_ANSWER: 0.0,
}
#: Factor on the score when a claim uses a number found neither in the question, nor among the chain's
#: earlier results, nor in IMPLICIT_CONSTANTS (a number from nowhere).
UNGROUNDED_FACTOR = 0.6


@dataclass
class WorkCheck:
    status: WorkStatus
    score: float
    claims: int = 0
    wrong: list[str] = field(default_factory=list)  #: the claims that do not hold
    ungrounded: list[str] = field(default_factory=list)  #: numbers from nowhere
    derived: bool = False  #: the answer is a result the chain computed
    repaired_answer: str | None = None  #: the answer once every claim is recomputed (only when it differs)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status.value, "score": round(self.score, 4), "claims": self.claims,
                                  "reasons": self.reasons}
        if self.repaired_answer is not None:
            out["repaired_answer"] = self.repaired_answer
        return out


def numbers_in(text: str) -> set[Fraction]:
    """Every number a text states, in digits or in words ("three", "a dozen", "twice")."""
    found = {abs(v) for v in (to_number(t) for t in re.findall(NUM, text)) if v is not None}
    found |= {abs(v) / 100 for v in (to_number(t) for t in re.findall(NUM, text) if t.endswith("%")) if v is not None}
    found |= {Fraction(WORD_NUMBERS[w]) for w in re.findall(r"[a-z]+", text.lower()) if w in WORD_NUMBERS}
    return found


def format_number(v: Fraction) -> str:
    """A value as an answer is written: 12, 2.5, 3.33 (at most two decimals, no trailing zeros)."""
    if v.denominator == 1:
        return str(v.numerator)
    return f"{float(v):.2f}".rstrip("0").rstrip(".")


def _repair(checks: list[ArithmeticCheck], answer: Fraction) -> Fraction | None:
    """The calculator: recompute every claim in order, each using the true values of the earlier
    miscomputed ones; the answer's true value if the answer was one of the miscomputed results."""
    fixes: dict[Fraction, Fraction] = {}
    for c in checks:
        value = _evaluate(c.claim.rsplit("=", 1)[0], fixes)
        if value is None or c.result is None:
            return None
        if not _close(value, c.result):
            fixes[c.result] = value
    if answer in fixes:
        return fixes[answer]
    return None


def check_work(text: str, question: str | None = None, fmt: ReasoningFormat | str | None = None) -> WorkCheck:
    """Check one completion's own work. `question` (when given) grounds the numbers the claims use."""
    f = get_format(fmt)
    parsed = f.parse(text)
    answer_text = extract_answer(text, f).text if parsed.valid else None
    if not answer_text:
        return WorkCheck(WorkStatus.NO_ANSWER, STATUS_SCORE[WorkStatus.NO_ANSWER],
                         reasons=["no answer in format: does not vote"])
    reasoning = parsed.reasoning or ""
    checks = check_arithmetic(reasoning)
    wrong = [c.claim for c in checks if not c.holds]
    # Grounding: each claim's operands must come from the question, an earlier result, or a constant.
    known = numbers_in(question) | IMPLICIT_CONSTANTS if question is not None else None
    ungrounded: list[str] = []
    if known is not None:
        for c in checks:
            ungrounded += [format_number(v) for v in c.operands if abs(v) not in known]
            if c.result is not None:
                known.add(abs(c.result))
    answer = to_number(answer_text.strip())
    results = [c.result for c in checks if c.holds and c.result is not None]
    derived = answer is not None and any(_close(r, answer) for r in results)
    reasons: list[str] = []
    repaired = None
    if wrong:
        status = WorkStatus.WRONG_ARITHMETIC
        reasons += [f"miscomputed: {w}" for w in wrong]
        fixed = _repair(checks, answer) if answer is not None else None
        if fixed is not None and answer is not None and not _close(fixed, answer):
            repaired = format_number(fixed)
            reasons.append(f"recomputed, the chain gives {repaired}")
    elif answer is None or not checks:
        status = WorkStatus.UNCHECKED
        reasons.append("no arithmetic to re-execute" if not checks else "the answer is not a number")
    elif derived:
        status = WorkStatus.CONSISTENT
        reasons.append(f"{len(checks)} claim(s) re-executed; the answer is a computed value")
    else:
        status = WorkStatus.NOT_DERIVED
        reasons.append(f"the answer {answer_text.strip()} is none of the values the reasoning computes")
    score = STATUS_SCORE[status]
    if ungrounded:
        score *= UNGROUNDED_FACTOR
        reasons.append("numbers from nowhere: " + ", ".join(dict.fromkeys(ungrounded)))
    return WorkCheck(status, score, len(checks), wrong, ungrounded, derived, repaired, reasons)
