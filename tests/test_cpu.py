"""The engines' default thread count: asked for, else EDGEREASON_THREADS, else every core."""

import os

import pytest

from edgereason.cpu import default_threads, set_torch_threads


def test_default_threads_reads_the_environment_and_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("EDGEREASON_THREADS", "3")
    assert default_threads(5) == 5 and default_threads(None) == 3
    monkeypatch.delenv("EDGEREASON_THREADS")
    assert default_threads() == (os.cpu_count() or 1)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("EDGEREASON_THREADS", bad)
        with pytest.raises(ValueError, match="EDGEREASON_THREADS"):
            default_threads()


def test_torch_takes_its_threads_from_the_same_setting(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("EDGEREASON_THREADS", "1")
        set_torch_threads()
        assert torch.get_num_threads() == 1
        set_torch_threads(2)  # an explicit request wins over the environment
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("EDGEREASON_THREADS")
        torch.set_num_threads(1)
        set_torch_threads()  # nobody asked: torch's own choice stands
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
