"""Worked solutions (rationales) for supervised training, each checked before a model sees it.

Where they come from:
- the arithmetic generator's problems (`arith-train`): the chain each problem records
  (`meta["chain"]`) written out as reasoning, every step an `a op b = c` claim, in wording drawn
  per problem from several phrasings (so the model learns to compute the steps, not one template);
- GSM8K train: the solution written by people, its calculator annotations (`<<48/2=24>>`) stripped
  (default) or kept, the `#### 72` line giving the answer;
- any JSONL/CSV/Parquet with a question, an answer and a `solution` (or `rationale`) column.

Every rationale is checked with the work check that serve's votes use (`edgereason.work_check`): a
stated step that does not compute, or a final answer that is not the last value the rationale
computes, is a fault, reported with the problem's id (which carries its file line) and never trained
on. A problem without a rationale is a fault too.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from edgereason.problems import Problem
from edgereason.work_check import check_arithmetic, format_number, to_number

Calculator = Literal["strip", "keep"]


@dataclass(frozen=True)
class Rationale:
    problem: Problem
    reasoning: str
    answer: str


# ---- the generator's chains, written out ---------------------------------------------------------

_START = ("{who} starts with {a} {what}.", "At first {who} has {a} {what}.", "{who} has {a} {what} to begin with.")
_GROUPED = ("{a} groups of {b}: {a} * {b} = {r} {what}.", "{who} has {a} * {b} = {r} {what} in all.",
            "There are {a} groups with {b} in each, so {a} * {b} = {r} {what}.")
_STEP = {
    "+": ("Then {b} more: {a} + {b} = {r}.", "{a} + {b} = {r} {what} after getting {b} more.",
          "Adding {b}: {a} + {b} = {r}."),
    "-": ("{b} are gone: {a} - {b} = {r}.", "{a} - {b} = {r} {what} are left.", "Taking away {b}: {a} - {b} = {r}."),
    "*": ("{b} times as many: {a} * {b} = {r}.", "Multiplying by {b}: {a} * {b} = {r} {what}.",
          "{a} * {b} = {r}, since it is {b} times as many."),
    "/": ("One of {b} equal piles: {a} / {b} = {r}.", "{a} / {b} = {r} {what} in each pile, and {who} keeps one.",
          "Splitting into {b} equal parts: {a} / {b} = {r}."),
}
_END = ("So {who} has {r} {what} now.", "{who} ends with {r} {what}.", "That leaves {r} {what}.")


def _subject(question: str) -> tuple[str, str]:
    """(who, what) of a generator story: its first word and the thing it counts."""
    from edgereason.arithmetic import THINGS

    what = next((t for t in THINGS if t in question), "items")
    return question.split()[0], what


def chain_rationale(problem: Problem) -> str:
    """The reasoning for a generator problem from its recorded chain, worded per problem (seeded by
    its id, so the same problem always reads the same)."""
    chain = problem.meta.get("chain")
    if not chain:
        raise ValueError(f"{problem.id}: no recorded chain (not a generator problem)")
    rng = random.Random(problem.id)
    who, what = _subject(problem.question)
    lines = []
    for i, (a, op, b, r) in enumerate(chain):
        if i == 0 and problem.meta.get("grouped"):
            lines.append(rng.choice(_GROUPED).format(who=who, what=what, a=a, b=b, r=r))
            continue
        if i == 0:
            lines.append(rng.choice(_START).format(who=who, what=what, a=a))
        lines.append(rng.choice(_STEP[str(op)]).format(who=who, what=what, a=a, b=b, r=r))
    lines.append(rng.choice(_END).format(who=who, what=what, r=chain[-1][3]))
    if closing := problem.meta.get("closing"):  # the value turned into the answer asked for (a letter, yes/no)
        lines.append(closing)
    return "\n".join(lines)


# ---- written solutions ---------------------------------------------------------------------------

_ANNOTATION = re.compile(r"<<[^<>]*>>")


def written_rationale(solution: str, calculator: Calculator = "strip") -> str:
    """The reasoning of a written solution: the text before a GSM8K `####` answer line, with its
    calculator annotations stripped (`48/2 = <<48/2=24>>24` -> `48/2 = 24`) or kept."""
    text = solution.split("####")[0].strip()
    return _ANNOTATION.sub("", text) if calculator == "strip" else text


# ---- checks --------------------------------------------------------------------------------------


def rationale_fault(reasoning: str, answer: str) -> str | None:
    """Why a rationale must not be trained on, or None: a stated step that does not compute, or a
    numeric answer that is not the last value the rationale computes. A rationale with no step to
    re-execute passes (nothing to contradict it)."""
    if not reasoning.strip():
        return "empty rationale"
    checks = check_arithmetic(reasoning)
    wrong = [c.claim for c in checks if not c.holds]
    if wrong:
        return f"a step does not compute: {wrong[0]!r}"
    value = to_number(answer.strip())
    if value is None or not checks or checks[-1].result is None:
        return None
    if checks[-1].result != value and value not in {c.result for c in checks}:
        return (f"the answer {answer.strip()} is not the rationale's last computed value "
                f"{format_number(checks[-1].result)}")
    return None


def rationales(problems: list[Problem], calculator: Calculator = "strip") -> tuple[list[Rationale], list[str]]:
    """The checked rationales of `problems`, and a fault message for each problem left out."""
    kept: list[Rationale] = []
    faults: list[str] = []
    for p in problems:
        if p.meta.get("chain"):
            reasoning = chain_rationale(p)
        elif p.solution:
            reasoning = written_rationale(p.solution, calculator)
            # Checked with its calculator annotations: `<<3+16=19>>` states the step that the prose
            # around it ("3 green hats + 16 pink hats = 19") hides from the claim reader.
            checked = written_rationale(p.solution, "keep")
        else:
            faults.append(f"{p.id}: no rationale (a `solution` or `rationale` column, or a generator chain)")
            continue
        fault = rationale_fault(checked if p.solution and not p.meta.get("chain") else reasoning, p.gold_answer)
        if fault is not None:
            faults.append(f"{p.id}: {fault}")
            continue
        kept.append(Rationale(p, reasoning, p.gold_answer))
    return kept, faults
