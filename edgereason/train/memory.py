"""Where a training run's memory goes: resident memory at each phase of the set-up and at every step.

A run's peak RSS alone (run.json `peak_rss_mb`) cannot say whether the model, the rollout engine, the
first step's activations or a slow growth over steps holds it. The ledger marks the resident and peak
memory after each phase (written to run.json `memory`, and the report's table), and the run record
adds the resident memory and the peak so far to each step's metrics row (`rss_mb`, `peak_rss_mb`),
so growth over steps shows as a line and a step's transient as a jump in the peak.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
from dataclasses import dataclass, field
from typing import Any

# glibc's mallopt parameter for the size above which an allocation gets its own mapping (malloc.h).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
_ONEDNN_CACHE_ENTRIES = 16


@functools.cache
def _libc() -> Any | None:
    """glibc, or None where the C library is another (musl, macOS): the low-memory settings then do nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_memory_growth() -> None:
    """Keep a training process's resident memory from growing step after step (`low_memory`).

    What grows is native, not live tensors (docs/measurements.md): glibc keeps the freed blocks of
    each step's varying-size activations, and oneDNN keeps a kernel for every new shape. A fixed mmap
    threshold gives every block over 128 KiB its own mapping, returned to the system when freed (glibc
    otherwise raises the threshold as it sees large frees, and those blocks then stay in the heap);
    oneDNN reads its cache capacity from the environment when it first builds a kernel, so this must
    run before the first matmul.

    The threshold is most of `low_memory`'s cost beyond checkpointing: an SFT batch's activations are
    1-4 MiB blocks, each then a fresh mapping whose pages are faulted in again. `bench-train --method
    sft --variants low-memory`, 8 steps: 128 KiB (this) and 1 MiB 16 s/step at 1.39 GB peak; 4 MiB
    8.7 s/step at 1.82 GB; 32 MiB 8.7 s at 2.11 GB (checkpointing alone: 8.3 s at 2.4 GB). A user's
    own threshold (glibc's `MALLOC_MMAP_THRESHOLD_` or its tunable) wins, as oneDNN's setting does."""
    libc = _libc()
    user_set = "MALLOC_MMAP_THRESHOLD_" in os.environ or "glibc.malloc.mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", "")
    if libc is not None and not user_set:
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    os.environ.setdefault(_ONEDNN_CACHE, str(_ONEDNN_CACHE_ENTRIES))  # a user's own setting wins


def return_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc's malloc_trim; a no-op elsewhere). Called after
    each optimizer step under `low_memory`: the step's activations are freed by then."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


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

    def step(self, step: int) -> dict[str, float]:
        """A step's metrics-row figures: the resident memory now, and the peak so far (a step whose
        transient working set raised the peak shows as a jump in it, though the resident memory it
        logs is back down). The first step this process logs is marked (its activations, gradients
        and optimizer state are then allocated)."""
        if not self.stepped:
            self.mark(f"step {step} (first of this process)")
            self.stepped = True
        return {"rss_mb": round(rss_mb(), 1), "peak_rss_mb": round(peak_rss_mb(), 1)}

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
