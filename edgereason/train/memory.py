"""Where a training run's memory goes: resident memory at each phase of the set-up and at every step.

A run's peak RSS alone (run.json `peak_rss_mb`) cannot say whether the model, the rollout engine, the
first step's activations or a slow growth over steps holds it. The ledger marks the resident and peak
memory after each phase (written to run.json `memory`, and the report's table), and the run record
adds the resident memory to each step's metrics row (`rss_mb`), so growth over steps shows as a line.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Any


def rss_mb() -> float:
    """This process's resident memory now."""
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    """This process's highest resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class MemoryLedger:
    """Resident and peak memory after each named phase, in order."""

    marks: list[dict[str, Any]] = field(default_factory=list)
    stepped: bool = False

    def mark(self, phase: str) -> None:
        self.marks.append({"phase": phase, "rss_mb": round(rss_mb(), 1), "peak_mb": round(peak_rss_mb(), 1)})

    def step(self, step: int) -> float:
        """The resident memory for a step's metrics row; the first step this process logs is marked
        (its activations, gradients and optimizer state are then allocated)."""
        if not self.stepped:
            self.mark(f"step {step} (first of this process)")
            self.stepped = True
        return round(rss_mb(), 1)

    def end(self, step: int) -> None:
        self.mark(f"step {step} (last)")

    def report_lines(self) -> list[str]:
        """A run report's section: each phase with what it added to the resident memory."""
        lines = ["", "Memory by phase (`memory` in run.json; `rss_mb` per step in metrics.jsonl):", "",
                 "| phase | resident MB | added MB | peak so far MB |", "|---|---|---|---|"]
        before = 0.0
        for m in self.marks:
            lines.append(f"| {m['phase']} | {m['rss_mb']:.0f} | {m['rss_mb'] - before:+.0f} | {m['peak_mb']:.0f} |")
            before = m["rss_mb"]
        return lines
