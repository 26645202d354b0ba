"""Safe file handling: atomic writes and content hashes.

Every artifact (exports, run records, caches) is written under a temporary name in its final
directory and renamed into place only when complete, so a failed or interrupted write never leaves a
truncated file under the final name and never replaces a good file with a bad one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class AtomicWriteError(RuntimeError):
    """The block meant to write a file or folder produced nothing."""


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    Works for files and for directories (the block creates whichever it needs at the yielded path).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    tmp.rmdir()  # the caller creates a file or a directory here
    try:
        yield tmp
        if not tmp.exists():
            raise AtomicWriteError(f"writing {final.name} produced nothing")
        if final.is_dir() and tmp.is_dir():
            # Directories cannot be replaced atomically: swap via a backup that is removed last.
            backup = final.with_name(f".{final.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(final, backup)
            os.replace(tmp, final)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path) -> str:
    """One hash over every file in a directory (names and contents, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
