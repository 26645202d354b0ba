"""Shared fixtures: real models and data, no mocks.

Tests that load a model or start an engine are marked `model` (module-level `pytestmark`); the
rest form the fast lane, `make test-fast`."""

from __future__ import annotations

import pytest

from edgereason.models import ResolvedModel, resolve_model
from edgereason.quiet import quiet_libraries

quiet_libraries()


@pytest.fixture(scope="session")
def default_model() -> ResolvedModel:
    """The embedded SmolLM2-135M with its cached Hugging Face copy (made once per cache)."""
    return resolve_model("smollm2-135m", need_hf=True)
