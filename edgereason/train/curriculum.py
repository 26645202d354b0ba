"""A curriculum with signal: train on problems the model sometimes solves.

GRPO learns from differences inside a group of completions: a problem the model always solves, or
never solves, gives every completion the same correctness and no gradient toward being right (the
Open-RS and Qwen3 studies keep 0 < pass rate < 1 for this reason). So:

1. **Measure** each candidate's pass rate with the model itself: k sampled completions on the fast
   inference path, graded like the reward grades them (`measure`).
2. **Keep the band**: problems with `low < rate < high` (`in_band`); the rest are parked (never
   solved) or retired (always solved).
3. **Re-measure as training moves**: every group of rollouts is a fresh measurement of its problem
   (all G right: retired; all G wrong: parked), and every `refresh_steps` steps a sample of the
   parked, retired and not-yet-measured problems is measured again with the current adapter, and
   those now in the band come back (`CurriculumPool`).

The pool feeds TRL through an `IterableDataset` that reads it live (`stream`), so changes apply to
the next step without rebuilding the dataloader.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereason.grading import answers_equal, extract_answer
from edgereason.problems import Problem

Sampler = Callable[[Sequence[Problem], int], list[list[str]]]  # problems, k -> k completions each


def grade(text: str, problem: Problem, fmt: Any) -> bool:
    """Correctness as the accuracy reward sees it (the format's answer, else the fallback rules)."""
    return answers_equal(extract_answer(text, fmt).text, problem.gold_answer)


def measure(problems: Sequence[Problem], sample: Sampler, k: int, fmt: Any) -> dict[str, float]:
    """Each problem's share of k sampled completions that are right."""
    rates: dict[str, float] = {}
    for p, completions in zip(problems, sample(problems, k)):
        rates[p.id] = sum(grade(c, p, fmt) for c in completions) / max(1, len(completions))
    return rates


def in_band(problems: Sequence[Problem], rates: dict[str, float], low: float = 0.0, high: float = 1.0) -> list[Problem]:
    """The measured problems with low < pass rate < high (strictly), in their given order."""
    return [p for p in problems if p.id in rates and low < rates[p.id] < high]


@dataclass
class CurriculumPool:
    """Problems by state: `active` (in the band, trained on), `parked` (never solved), `retired`
    (always solved), `unmeasured` (candidates not measured yet)."""

    problems: dict[str, Problem]
    render: Callable[[Problem], str]
    active: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    unmeasured: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    low: float = 0.0
    high: float = 1.0
    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, candidates: Sequence[Problem], rates: dict[str, float], render: Callable[[Problem], str],
              low: float = 0.0, high: float = 1.0, seed: int = 0, reserve: Sequence[Problem] = ()) -> CurriculumPool:
        pool = cls({p.id: p for p in [*candidates, *reserve]}, render, low=low, high=high, seed=seed)
        pool.unmeasured = [p.id for p in reserve]
        pool.apply(rates)
        return pool

    def apply(self, rates: dict[str, float]) -> None:
        """Place measured problems by their new rates."""
        for pid, rate in rates.items():
            for group in (self.active, self.parked, self.retired, self.unmeasured):
                if pid in group:
                    group.remove(pid)
            self.rates[pid] = rate
            if self.low < rate < self.high:
                self.active.append(pid)
            elif rate <= self.low:
                self.parked.append(pid)
            else:
                self.retired.append(pid)

    def observe(self, pid: str, correct: Sequence[bool]) -> None:
        """A group of rollouts of one problem: its pass rate now."""
        if pid in self.problems and correct:
            self.apply({pid: sum(correct) / len(correct)})

    def to_refresh(self, n: int, step: int) -> list[Problem]:
        """Up to n problems to measure again: parked, retired and unmeasured, in fair shares."""
        rng = random.Random(self.seed * 7919 + step)
        groups = [list(self.parked), list(self.retired), list(self.unmeasured)]
        for g in groups:
            rng.shuffle(g)
        picked: list[str] = []
        while len(picked) < n and any(groups):
            for g in groups:
                if g and len(picked) < n:
                    picked.append(g.pop())
        return [self.problems[pid] for pid in picked]

    def stream(self) -> Iterator[dict[str, str]]:
        """Training rows drawn from the live active set (endless; seeded)."""
        rng = random.Random(self.seed)
        while True:
            ids = self.active or self.parked or self.retired  # never stall: a run with no band trains anyway
            if not ids:
                raise RuntimeError("the curriculum pool is empty")
            p = self.problems[rng.choice(ids)]
            yield {"prompt": self.render(p), "answer": p.gold_answer, "id": p.id}

    def sizes(self) -> dict[str, int]:
        return {"active": len(self.active), "parked": len(self.parked), "retired": len(self.retired),
                "unmeasured": len(self.unmeasured)}

    # ---- persistence (resume) ----------------------------------------------------------------
    def save(self, path: Path) -> None:
        state = {"active": self.active, "parked": self.parked, "retired": self.retired, "unmeasured": self.unmeasured,
                 "rates": self.rates, "history": self.history}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(path)

    def restore(self, path: Path) -> bool:
        if not path.is_file():
            return False
        state = json.loads(path.read_text(encoding="utf-8"))
        for key in ("active", "parked", "retired", "unmeasured"):
            setattr(self, key, [pid for pid in state[key] if pid in self.problems])
        self.rates, self.history = state["rates"], state.get("history", [])
        return True
