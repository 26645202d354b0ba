"""Standard-library internals: a process pool's worker processes (to kill a worker stuck in a
grading call; `shutdown` waits for it otherwise). Checked against the running Python on import."""

from __future__ import annotations

import concurrent.futures as cf
import inspect
from multiprocessing.process import BaseProcess

from edgereason.compat import require

require("self._processes =" in inspect.getsource(cf.ProcessPoolExecutor.__init__), "python",
        "concurrent.futures.ProcessPoolExecutor no longer keeps its workers in self._processes")


def pool_processes(pool: cf.ProcessPoolExecutor) -> list[BaseProcess]:
    """The pool's live worker processes."""
    return list((getattr(pool, "_processes", None) or {}).values())
