"""Voting over sampled answers, grouping equivalent answers with the shared grader.

Pure logic, no engine: the server feeds it the answers it extracted from k samples (and, for the
modes that check the work, each sample's `WorkCheck`) and gets back the winning answer, its share
(the confidence) and the full tally. The modes (`VoteMode`):

- `majority`: one sample, one vote (maj@k);
- `verified`: each vote weighs the sample's work-check score (`edgereason.work_check`): a sample whose
  own arithmetic is wrong weighs ~0, one whose answer its chain computes weighs 1;
- `best`: the sample with the highest check score wins; ties go to the answer with more votes;
- `repaired`: `verified`, after the calculator: a sample whose chain was right but miscomputed votes
  for the answer its chain gives once recomputed (reported as its own mode, never silently).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from edgereason.grading import answers_equal, normalize_answer

if TYPE_CHECKING:
    from edgereason.work_check import WorkCheck


class VoteMode(StrEnum):
    MAJORITY = "majority"
    VERIFIED = "verified"
    BEST = "best"
    REPAIRED = "repaired"

    @property
    def checks_work(self) -> bool:
        return self is not VoteMode.MAJORITY


@dataclass
class AnswerGroup:
    """Samples whose answers are equivalent; `answer` is the first member's answer text."""

    answer: str
    members: list[int] = field(default_factory=list)
    weight: float = 0.0  #: the summed weights of the members (their count in a majority vote)

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
    mode: VoteMode = VoteMode.MAJORITY

    def to_dict(self) -> dict[str, Any]:
        weighted = self.mode is not VoteMode.MAJORITY
        return {
            "answer": self.answer,
            "share": round(self.share, 4),
            "votes": [{"answer": g.answer, "count": g.count, "samples": g.members,
                       **({"weight": round(g.weight, 4)} if weighted else {})} for g in self.groups],
            "invalid": len(self.invalid),
            "samples": self.total,
            "tie": self.tie,
            "mode": self.mode.value,
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
    return weighted_vote(answers, None, valid, equal)


def _unusable(answers: Sequence[str | None], valid: Sequence[bool] | None) -> list[int]:
    return [i for i, a in enumerate(answers) if a is None or not str(a).strip() or (valid is not None and not valid[i])]


def weighted_vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None,
    valid: Sequence[bool] | None = None,
    equal: Callable[[str, str], bool] = answers_equal,
    mode: VoteMode = VoteMode.MAJORITY,
) -> VoteResult:
    """The answer with the most weight (every weight 1 without `weights`: the majority). Ties go to
    the group that appeared first; the share is the winner's weight over all usable weight (its count
    over the usable samples when all weigh 1)."""
    invalid = _unusable(answers, valid)
    groups = group_answers(answers, equal, skip=invalid)
    w = list(weights) if weights is not None else [1.0] * len(answers)
    for g in groups:
        g.weight = sum(w[i] for i in g.members)
    # Stable sort: equal weights keep first-appearance order, so ties go to the earliest answer.
    ranked = sorted(groups, key=lambda g: -g.weight)
    if not ranked:
        return VoteResult(None, None, 0.0, [], invalid, len(answers), False, mode)
    top = ranked[0]
    total = sum(g.weight for g in ranked)
    tie = len(ranked) > 1 and ranked[1].weight == top.weight
    share = top.weight / total if total > 0 else 1.0 / len(ranked)
    # The sample that speaks for the group: its best-checked member (the first one in a plain vote).
    speaker = max(top.members, key=lambda i: w[i])
    return VoteResult(top.answer, speaker, share, ranked, invalid, len(answers), tie, mode)


def best_vote(
    answers: Sequence[str | None],
    scores: Sequence[float],
    valid: Sequence[bool] | None = None,
    equal: Callable[[str, str], bool] = answers_equal,
) -> VoteResult:
    """The answer of the best-checked sample; among samples with the same score, the answer with more
    votes, then the earliest. The share is the winner's vote share, as in maj@k."""
    invalid = _unusable(answers, valid)
    groups = group_answers(answers, equal, skip=invalid)
    if not groups:
        return VoteResult(None, None, 0.0, [], invalid, len(answers), False, VoteMode.BEST)
    for g in groups:
        g.weight = max(scores[i] for i in g.members)
    order = {id(g): n for n, g in enumerate(groups)}
    ranked = sorted(groups, key=lambda g: (-g.weight, -g.count, order[id(g)]))
    top = ranked[0]
    tie = len(ranked) > 1 and (ranked[1].weight, ranked[1].count) == (top.weight, top.count)
    speaker = max(top.members, key=lambda i: scores[i])
    usable = len(answers) - len(invalid)
    return VoteResult(top.answer, speaker, top.count / usable, ranked, invalid, len(answers), tie, VoteMode.BEST)


def vote(
    mode: VoteMode | str,
    answers: Sequence[str | None],
    valid: Sequence[bool] | None = None,
    checks: Sequence[WorkCheck] | None = None,
    equal: Callable[[str, str], bool] = answers_equal,
) -> VoteResult:
    """The vote of `mode` over the samples' answers; the modes that check the work need `checks`."""
    mode = VoteMode(mode)
    if mode is VoteMode.MAJORITY:
        return majority_vote(answers, valid, equal)
    if checks is None or len(checks) != len(answers):
        raise ValueError(f"a {mode.value} vote needs one work check per sample")
    if mode is VoteMode.BEST:
        return best_vote(answers, [c.score for c in checks], valid, equal)
    if mode is VoteMode.REPAIRED:
        answers, weights = repaired_ballots(answers, checks)
        return weighted_vote(answers, weights, valid, equal, mode)
    return weighted_vote(answers, [c.score for c in checks], valid, equal, mode)


def ballot(mode: VoteMode, answer: str | None, check: WorkCheck) -> tuple[str | None, float]:
    """One checked sample's (answer, weight) as a vote of `mode` counts it as it arrives (early stop)."""
    if mode is VoteMode.REPAIRED:
        (a,), (w,) = repaired_ballots([answer], [check])
        return a, w
    return answer, check.score


def repaired_ballots(answers: Sequence[str | None], checks: Sequence[WorkCheck]) -> tuple[list[str | None], list[float]]:
    """The calculator's ballots: a sample whose miscomputed chain gives another answer once recomputed
    votes for that answer, weighted as a consistent sample (its chain is now checked); others as in
    a verified vote."""
    from edgereason.work_check import STATUS_SCORE, UNGROUNDED_FACTOR, WorkStatus

    out_answers: list[str | None] = []
    weights: list[float] = []
    for a, c in zip(answers, checks):
        if c.repaired_answer is not None and a is not None:
            out_answers.append(c.repaired_answer)
            weights.append(STATUS_SCORE[WorkStatus.CONSISTENT] * (UNGROUNDED_FACTOR if c.ungrounded else 1.0))
        else:
            out_answers.append(a)
            weights.append(c.score)
    return out_answers, weights


def decided(counts: Sequence[float], remaining: float) -> bool:
    """True when the leading group can no longer be caught by the runner-up, even if every
    remaining sample joined it (early stop): `counts` are votes, or weights with `remaining` the
    most weight the samples still to come can add."""
    if not counts:
        return False
    ordered = sorted(counts, reverse=True)
    second = ordered[1] if len(ordered) > 1 else 0
    return ordered[0] > second + remaining


class VoteTally:
    """Votes counted as samples arrive, for early stopping: `add` returns True once the leading
    answer can no longer be overtaken by the samples still to come. With weights (a verified vote),
    each sample still to come may add at most `max_weight`."""

    def __init__(self, k: int, equal: Callable[[str, str], bool] = answers_equal, max_weight: float = 1.0) -> None:
        self.k = k
        self.equal = equal
        self.max_weight = max_weight
        self.answers: list[str | None] = []
        self.weights: list[float] = []

    def add(self, answer: str | None, valid: bool = True, weight: float = 1.0) -> bool:
        self.answers.append(answer if valid else None)
        self.weights.append(weight)
        remaining = self.k - len(self.answers)
        groups = group_answers(self.answers, self.equal)
        totals = [sum(self.weights[i] for i in g.members) for g in groups]
        return remaining > 0 and decided(totals, remaining * self.max_weight)
