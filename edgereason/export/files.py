"""Export-specific file checks; atomic writes and hashes live in edgereason.files."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgereason.files import AtomicWriteError, atomic_output, sha256_dir, sha256_file, write_text_atomic

__all__ = ["AtomicWriteError", "ExportError", "atomic_output", "require_free_space", "sha256_dir", "sha256_file",
           "write_text_atomic"]


class ExportError(RuntimeError):
    """An export step failed; the message names the step and what to do about it."""


def require_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Fail before writing anything when the disk cannot hold what is about to be written."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise ExportError(
            f"not enough disk space for {what} in {directory}: need about {needed_bytes / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free"
        )
