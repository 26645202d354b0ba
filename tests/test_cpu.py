"""The engines' default thread count: asked for, else EDGEREASON_THREADS, else every core."""

import os

import pytest

from edgereason.cpu import default_threads


def test_default_threads_reads_the_environment_and_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("EDGEREASON_THREADS", "3")
    assert default_threads(5) == 5 and default_threads(None) == 3
    monkeypatch.delenv("EDGEREASON_THREADS")
    assert default_threads() == (os.cpu_count() or 1)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("EDGEREASON_THREADS", bad)
        with pytest.raises(ValueError, match="EDGEREASON_THREADS"):
            default_threads()
