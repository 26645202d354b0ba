"""A curriculum with signal: train on problems the model sometimes solves.

GRPO learns from differences inside a group of completions: a problem the model always solves, or
never solves, gives every completion the same correctness and no gradient toward being right (the
Open-RS and Qwen3 studies keep 0 < pass rate < 1 for this reason). So:

1. **Measure** each candidate's pass rate with the model itself: k sampled completions on the fast
   inference path, graded like the reward grades them (`measure`).
2. **Keep the band**: problems with `low < rate < high` (`in_band`); the rest are parked (never
   solved) or retired (always solved).
3. **Re-measure as training moves**: every group of rollouts adds to its problem's evidence (older
   evidence decays, so the estimate follows the model); a problem leaves the band only when the
   evidence says it is (almost) never or always solved, and every `refresh_steps` steps a sample of
   the parked, retired and not-yet-measured problems is measured again with the current adapter,
   and those now in the band come back (`CurriculumPool`).

The pool feeds TRL through an `IterableDataset` that reads it live (`stream`), so changes apply to
the next step without rebuilding the dataloader. With `balanced` sampling (opt-in) each draw
first picks a level uniformly (the arithmetic generator's steps, MATH levels) and then a problem
weighted by rate·(1 − rate), the variance of its correctness: the easiest level cannot fill the
band by numbers alone (a model trained mostly on one-step problems learns to do one step), and
problems near 0.5 — the groups least likely to tie — come up most (DAPO's dynamic sampling, made
cheap: it re-weights the draw instead of re-generating tied groups).
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


def training_row(p: Problem, render: Callable[[Problem], str]) -> dict[str, str]:
    """One row for TRL: the prompt, and the columns the reward functions read (`steps`: the known
    intermediate values, comma-separated, "" when the problem has none)."""
    return {"prompt": render(p), "answer": p.gold_answer, "id": p.id,
            "steps": ",".join(str(v) for v in p.meta.get("steps", ()))}


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
    # Evidence per problem: (successes, samples), older groups weighted by `decay` each time a new
    # group arrives. One all-wrong group of 4 happens 41% of the time at a true rate of 0.2, so a
    # single group must not decide; `min_evidence` samples' worth of it must.
    evidence: dict[str, tuple[float, float]] = field(default_factory=dict)
    decay: float = 0.7
    min_evidence: float = 6.0
    balanced: bool = False

    @classmethod
    def build(cls, candidates: Sequence[Problem], rates: dict[str, float], render: Callable[[Problem], str],
              low: float = 0.0, high: float = 1.0, seed: int = 0, reserve: Sequence[Problem] = ()) -> CurriculumPool:
        pool = cls({p.id: p for p in [*candidates, *reserve]}, render, low=low, high=high, seed=seed)
        pool.unmeasured = [p.id for p in reserve]
        pool.apply(rates)
        return pool

    def _place(self, pid: str, rate: float, margin: float = 0.0) -> None:
        """Active unless the rate is within `margin` of an edge of the band."""
        for group in (self.active, self.parked, self.retired, self.unmeasured):
            if pid in group:
                group.remove(pid)
        self.rates[pid] = rate
        if rate <= self.low + margin:
            self.parked.append(pid)
        elif rate >= self.high - margin:
            self.retired.append(pid)
        else:
            self.active.append(pid)

    def apply(self, rates: dict[str, float], samples: float | None = None) -> None:
        """Place problems by fresh measurements (a measurement replaces the evidence: it is what the
        model does now). With `samples` unknown the rate alone decides."""
        for pid, rate in rates.items():
            if samples is not None:
                self.evidence[pid] = (rate * samples, samples)
            self._place(pid, rate)

    def observe(self, pid: str, correct: Sequence[bool]) -> None:
        """A group of rollouts of one problem, added to its evidence."""
        if pid not in self.problems or not correct:
            return
        s, n = self.evidence.get(pid, (0.0, 0.0))
        s, n = s * self.decay + sum(correct), n * self.decay + len(correct)
        self.evidence[pid] = (s, n)
        if n >= self.min_evidence:
            self._place(pid, s / n, margin=0.05)
        else:  # too little evidence decides nothing: it stays where the last decision put it
            self.rates[pid] = s / n

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

    def draw(self, rng: random.Random) -> Problem:
        """One problem from the live active set (uniform, or `balanced`: a level, then by variance)."""
        ids = self.active or self.parked or self.retired  # never stall: a run with no band trains anyway
        if not ids:
            raise RuntimeError("the curriculum pool is empty")
        if not self.balanced:
            return self.problems[rng.choice(ids)]
        by_level: dict[int | None, list[str]] = {}
        for pid in ids:
            by_level.setdefault(self.problems[pid].level, []).append(pid)
        level = rng.choice(sorted(by_level, key=lambda lv: (lv is None, lv or 0)))
        group = by_level[level]
        # The floor keeps a problem whose estimate sits at an edge (parked/retired fallbacks) drawable.
        weights = [max(r * (1 - r), 0.02) for r in (self.rates.get(pid, 0.5) for pid in group)]
        return self.problems[rng.choices(group, weights)[0]]

    def stream(self) -> Iterator[dict[str, str]]:
        """Training rows drawn from the live active set (endless; seeded)."""
        rng = random.Random(self.seed)
        while True:
            p = self.draw(rng)
            yield training_row(p, self.render)

    def sizes(self) -> dict[str, int]:
        return {"active": len(self.active), "parked": len(self.parked), "retired": len(self.retired),
                "unmeasured": len(self.unmeasured)}

    # ---- persistence (resume) ----------------------------------------------------------------
    def save(self, path: Path) -> None:
        state = {"active": self.active, "parked": self.parked, "retired": self.retired, "unmeasured": self.unmeasured,
                 "rates": self.rates, "evidence": self.evidence, "history": self.history}
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
        self.evidence = {k: (float(v[0]), float(v[1])) for k, v in state.get("evidence", {}).items()}
        return True
