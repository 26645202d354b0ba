"""Fuzzing the API: schemathesis generates requests from the server's own OpenAPI schema and checks
every response against it (no 5xx, a documented status, a body that validates against the declared
response model); hypothesis sends message contents no client should but some will."""

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edgereason.backends.scripted import ScriptedBackend  # noqa: E402
from edgereason.formats import get_format  # noqa: E402
from edgereason.serve.app import create_app, serve_in_thread  # noqa: E402
from edgereason.serve.config import EngineLimits  # noqa: E402
from edgereason.serve.engine import ReasoningEngine  # noqa: E402

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


def _fuzz(base: str, examples: int) -> list[int]:
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    statuses = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=base, timeout=60)
            case.validate_response(response, checks=CHECKS)
            if response.status_code >= 400 and case.path.startswith("/v1/"):
                assert "error" in response.json()  # OpenAI-style error body
            statuses.append(response.status_code)

        fuzz()
    return statuses


@pytest.fixture(scope="module")
def scripted():
    """The whole API surface on the scripted engine: thousands of requests in seconds."""
    engine = ReasoningEngine(ScriptedBackend(max_concurrency=2, context_length=4096), get_format(),
                             EngineLimits(max_tokens=16, max_n=2, max_k=2, max_queue=8))
    s = serve_in_thread(create_app(engine, "scripted"))
    yield s
    s.stop()


def test_no_input_gives_a_server_error_and_every_body_fits_its_schema(scripted):
    statuses = _fuzz(scripted.base, 100)
    assert len(statuses) > 250
    assert any(c == 200 for c in statuses) and any(400 <= c < 500 for c in statuses)


_TEXT = st.one_of(
    st.text(min_size=0, max_size=50),
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x1F), max_size=20),  # control chars
    st.just("\ud800"), st.just("a\udfffb"),  # lone surrogates
    st.text(min_size=1, max_size=3).map(lambda s: s * 5000),  # long runs
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(content=_TEXT, role=st.sampled_from(["user", "system", "assistant", "developer"]))
def test_any_message_content_is_answered_or_refused_not_crashed(scripted, content, role):
    messages = [{"role": role, "content": content}, {"role": "user", "content": "hi"}]
    body = json.dumps({"model": "scripted", "messages": messages, "max_tokens": 4}, ensure_ascii=True)
    r = httpx.post(scripted.base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert "surrogate" in r.json()["error"]["message"] or "context" in r.json()["error"]["message"]


@pytest.mark.model
def test_fuzz_against_the_real_edge_server():
    from live_server import Server

    # Tiny limits keep each real generation short; the point is the input space, not the answers.
    s = Server(llama_cpp={"ctx_per_slot": 512, "slots": 2}, limits={"max_tokens": 4, "max_n": 2, "max_k": 2, "max_queue": 8})
    try:
        statuses = _fuzz(s.base, 20)
    finally:
        s.stop()
    assert len(statuses) > 50 and any(c == 200 for c in statuses)
