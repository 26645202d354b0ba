"""How many CPU threads edgereason's engines (llama.cpp, OpenVINO) use when none is asked for.

`EDGEREASON_THREADS` overrides the default, every core. On a machine shared with other CPU-bound
work, set it to the cores that are free: llama.cpp's threads meet at a barrier on every operation,
so one descheduled thread stalls the others. Beside one busy core of two, generation at 2 threads
fell from 248 to 6-9 tokens/s here, while 1 thread kept 140-146 (`scripts/bench_shared_cpu.py`,
docs/measurements.md).
"""

from __future__ import annotations

import os


def asked_threads(requested: int | None = None) -> int | None:
    """`requested` when given, else `EDGEREASON_THREADS`, else None (nobody asked)."""
    if requested:
        return requested
    env = os.environ.get("EDGEREASON_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"EDGEREASON_THREADS={env!r}: give a whole number of threads, at least 1")
        return int(env)
    return None


def default_threads(requested: int | None = None) -> int:
    """`requested` when given, else `EDGEREASON_THREADS`, else every core."""
    return asked_threads(requested) or os.cpu_count() or 1


def set_torch_threads(requested: int | None = None) -> None:
    """Give torch's intra-op pool `requested` or `EDGEREASON_THREADS` threads; with neither, torch
    keeps its own default (the physical cores). Its OpenMP workers meet at a barrier like
    llama.cpp's, so on a shared CPU the same setting matters: `make run`'s SFT at 2 threads went
    from ~9 to ~48 s per step here while the test suite ran beside it."""
    threads = asked_threads(requested)
    if threads:
        import torch

        torch.set_num_threads(threads)
