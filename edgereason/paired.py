"""Paired comparison of two systems on the same problems (eval's comparisons, export's accuracy gate)."""

from __future__ import annotations

import math

#: The level every paired comparison is called significant at (eval's reports, make run's report, the
#: export's accuracy gate).
SIGNIFICANT = 0.05


def mcnemar_exact(a_correct: list[bool], b_correct: list[bool]) -> tuple[int, int, float]:
    """Paired comparison of two systems on the same problems: (b01, b10, two-sided exact p-value),
    where b01 counts problems only B solved and b10 those only A solved (binomial test on the
    discordant pairs)."""
    if len(a_correct) != len(b_correct):
        raise ValueError("paired test needs the same problems for both systems")
    b01 = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    b10 = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    n = b01 + b10
    if n == 0:
        return b01, b10, 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b01, b10) + 1)) / 2**n
    return b01, b10, min(1.0, 2 * tail)
