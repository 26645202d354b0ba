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


#: The files that make a model's weights what they are: a cache keyed on them stays valid exactly as
#: long as these are unchanged (a tokenizer or README edit does not make new weights).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "config.json")


def content_key(path: Path, length: int = 12) -> str:
    """The one key of a model's weights for every cache (HF copies of GGUFs, GGUF conversions of HF
    folders): the sha256 of a file, or of a folder's weight files (WEIGHT_PATTERNS), cut to `length`.

    Content, not names or sizes: a model retrained in place, whose files keep their names and sizes,
    gets a new key. Each hash is remembered per (path, size, mtime) of every file it covers, because
    hashing a multi-GB model takes seconds, in the cache's content-keys.json."""
    import json

    from edgereason.paths import cache_dir

    path = path.resolve()
    files = [path] if path.is_file() else sorted({f for pat in WEIGHT_PATTERNS for f in path.glob(pat) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"{path} holds no model weights ({', '.join(WEIGHT_PATTERNS)})")
    stamp = ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    index_path = cache_dir() / "content-keys.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if stamp not in index:
        if path.is_file():
            digest = sha256_file(path)
        else:
            h = hashlib.sha256()
            for f in files:
                h.update(f.name.encode())
                h.update(sha256_file(f).encode())
            digest = h.hexdigest()
        index[stamp] = digest
        write_text_atomic(index_path, json.dumps(index, indent=1))  # a lost race only costs a rehash
    return str(index[stamp])[:length]
