"""Metric math: confidence intervals and sample estimators (pure functions, unit-tested)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (0, 0) for n == 0.

    Preferred to the normal approximation because it stays inside [0, 1] and behaves at 0/n and n/n,
    which small evaluation samples hit often.
    """
    if n <= 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    computed as a stable product."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(answers: Sequence[str | None], valid: list[bool], correct: list[bool], k: int) -> float:
    """maj@k of one problem from its first k samples: 1 if the majority answer is correct, 0 if it is
    wrong, and for a tie at the top the expected value of breaking it uniformly (the share of tied
    groups that are correct), so ties neither help nor hurt on average."""
    return vote_correct("majority", answers, valid, correct, k)[0]


def vote_correct(mode: str, answers: Sequence[str | None], valid: list[bool], correct: list[bool], k: int,
                 scores: list[float] | None = None) -> tuple[float, bool]:
    """One problem's vote over its first k samples: (the expected correctness with ties at the top
    broken uniformly, whether the answer the vote returns is correct: ties to the earliest group, what
    a paired test needs). `mode` is majority, verified (votes weighted by `scores`, the samples' work
    checks) or best (the best-scored sample). A repaired vote is a verified one over the repaired
    ballots (`edgereason.voting.repaired_ballots`)."""
    from edgereason.voting import best_vote, weighted_vote

    if k > len(answers):
        raise ValueError(f"@{k} needs at least {k} samples, got {len(answers)}")
    if mode != "majority" and scores is None:
        raise ValueError(f"a {mode} vote needs the samples' scores")
    if mode == "best":
        result = best_vote(answers[:k], (scores or [])[:k], valid[:k])
    else:
        result = weighted_vote(answers[:k], scores[:k] if mode == "verified" and scores else None, valid[:k])
    if not result.groups:
        return 0.0, False
    top = result.groups[0]

    def rank(g: Any) -> tuple[float, int]:
        return (g.weight, g.count if mode == "best" else 0)

    tied = [g for g in result.groups if rank(g) == rank(top)]
    return sum(correct[g.members[0]] for g in tied) / len(tied), bool(correct[top.members[0]])
