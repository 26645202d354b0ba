"""Majority voting over sampled answers (maj@k), grouping equivalent answers with the shared grader.

Pure logic, no engine: the server feeds it the answers it extracted from k samples and gets back
the winning answer, its vote share (the confidence) and the full tally.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgereason.grading import answers_equal, normalize_answer


@dataclass
class AnswerGroup:
    """Samples whose answers are equivalent; `answer` is the first member's answer text."""

    answer: str
    members: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.members)


@dataclass
class VoteResult:
    answer: str | None  # the majority answer, None when no sample gave a usable answer
    winner: int | None  # index of the sample whose reasoning represents the majority
    share: float  # winner count / usable samples (the confidence)
    groups: list[AnswerGroup]  # largest first
    invalid: list[int]  # samples excluded (format invalid or no answer)
    total: int
    tie: bool  # the top two groups have the same count (earliest group wins)

    def to_dict(self) -> dict:
        return {
            "answer": self.answer,
            "share": round(self.share, 4),
            "votes": [{"answer": g.answer, "count": g.count, "samples": g.members} for g in self.groups],
            "invalid": len(self.invalid),
            "samples": self.total,
            "tie": self.tie,
        }


def group_answers(
    answers: Sequence[str | None],
    equal: Callable[[str, str], bool] = answers_equal,
    skip: Sequence[int] = (),
) -> list[AnswerGroup]:
    """Group equivalent answers, in order of first appearance. Identical normalised strings are
    grouped without calling `equal` (the common case), so math-verify runs only on real doubt."""
    groups: list[AnswerGroup] = []
    by_norm: dict[str, AnswerGroup] = {}
    excluded = set(skip)
    for i, a in enumerate(answers):
        if i in excluded or a is None or not a.strip():
            continue
        key = normalize_answer(a)
        group = by_norm.get(key)
        if group is None:
            group = next((g for g in groups if equal(a, g.answer)), None)
        if group is None:
            group = AnswerGroup(a)
            groups.append(group)
        by_norm[key] = group
        group.members.append(i)
    return groups


def majority_vote(
    answers: Sequence[str | None],
    valid: Sequence[bool] | None = None,
    equal: Callable[[str, str], bool] = answers_equal,
) -> VoteResult:
    """The majority answer of `answers`; samples with `valid[i] == False` or no answer don't vote."""
    invalid = [i for i, a in enumerate(answers) if a is None or not str(a).strip() or (valid is not None and not valid[i])]
    groups = group_answers(answers, equal, skip=invalid)
    # Stable sort: equal counts keep first-appearance order, so ties go to the earliest answer.
    ranked = sorted(groups, key=lambda g: -g.count)
    usable = len(answers) - len(invalid)
    if not ranked:
        return VoteResult(None, None, 0.0, [], invalid, len(answers), False)
    top = ranked[0]
    tie = len(ranked) > 1 and ranked[1].count == top.count
    return VoteResult(top.answer, top.members[0], top.count / usable, ranked, invalid, len(answers), tie)


def decided(counts: Sequence[int], remaining: int) -> bool:
    """True when the leading group can no longer be caught by the runner-up, even if every
    remaining sample joined it (early stop for maj@k)."""
    if not counts:
        return False
    ordered = sorted(counts, reverse=True)
    second = ordered[1] if len(ordered) > 1 else 0
    return ordered[0] > second + remaining


class VoteTally:
    """Votes counted as samples arrive, for early stopping: `add` returns True once the leading
    answer can no longer be overtaken by the samples still to come."""

    def __init__(self, k: int, equal: Callable[[str, str], bool] = answers_equal) -> None:
        self.k = k
        self.equal = equal
        self.answers: list[str | None] = []

    def add(self, answer: str | None, valid: bool = True) -> bool:
        self.answers.append(answer if valid else None)
        remaining = self.k - len(self.answers)
        return remaining > 0 and decided([g.count for g in group_answers(self.answers, self.equal)], remaining)
