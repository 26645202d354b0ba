"""Where edgereason finds its data and keeps its caches.

Environment variables override every default:
  EDGEREASON_DATA_DIR   benchmark/training data (default: the first `shared/data` found beside or
                        above the working directory or this checkout, e.g. ../shared/data)
  EDGEREASON_CACHE_DIR  converted models and other caches (default: ~/.cache/edgereason)
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The directory holding gsm8k/, math500/, aime24/ and amc23/ (raises if none is found)."""
    env = os.environ.get("EDGEREASON_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    for base in (Path.cwd().resolve(), _PACKAGE_ROOT):
        for d in (base, *base.parents):
            for candidate in (d / "shared" / "data", d.parent / "shared" / "data"):
                if (candidate / "gsm8k").is_dir():
                    return candidate
    raise FileNotFoundError(
        "no data directory found: set EDGEREASON_DATA_DIR (or pass --data-dir) to a folder holding "
        "gsm8k/, math500/, aime24/ and amc23/ JSONL files"
    )


def cache_dir() -> Path:
    """The edgereason cache root, created on first use."""
    path = Path(os.environ.get("EDGEREASON_CACHE_DIR", Path.home() / ".cache" / "edgereason")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path



def slug(spec: str, max_len: int = 80) -> str:
    """A folder name for anything a user names: a model, a target, a benchmark or a file path.

    Never the raw string: an absolute path joined onto a results folder replaces it (pathlib keeps
    the right-hand absolute path), so results would land beside, or inside, the user's data file.
    Every character outside `[A-Za-z0-9_.-]` becomes `_` (`/data/svamp.jsonl` -> `data_svamp.jsonl`),
    so the same spec always maps to the same folder (results resume) and two files named alike in
    different folders stay apart. A long spec keeps its first characters and 8 hex digits of the
    whole: a base GGUF and that GGUF + a LoRA share a long prefix."""
    import hashlib
    import re

    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.replace("://", "-")).strip("_") or "_"
    if len(out) <= max_len:
        return out
    return f"{out[: max_len - 9]}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
