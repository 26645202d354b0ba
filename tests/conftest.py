"""Shared fixtures: real models and data, no mocks.

Tests that load a model or start an engine are marked `model`: by a module-level `pytestmark`, by
`@pytest.mark.model`, or, for any test that asks for a real model fixture, by the hook below. The
rest form the fast lane, `make test-fast`."""

from __future__ import annotations

import pytest

from edgereason.models import ResolvedModel, resolve_model
from edgereason.quiet import quiet_libraries

quiet_libraries()


MODEL_FIXTURES = frozenset({"default_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # fixturenames holds the transitive closure, so a fixture built on a model marks its tests too
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def default_model() -> ResolvedModel:
    """The embedded SmolLM2-135M with its cached Hugging Face copy (made once per cache)."""
    return resolve_model("smollm2-135m", need_hf=True)
