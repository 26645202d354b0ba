"""Installed versions of the libraries a result depends on (recorded in run.json, manifest.json,
bench.json, and shown by `edgereason doctor`)."""

from __future__ import annotations

import importlib.metadata as md
import platform


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def versions(*dists: str, python: bool = False) -> dict[str, str | None]:
    out = {"python": platform.python_version()} if python else {}
    return out | {d: installed_version(d) for d in dists}
