"""Schemathesis fuzzes the server's own OpenAPI schema against a real server: no input gives a 5xx."""

import pytest
from hypothesis import HealthCheck, given, settings
from live_server import Server

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def server():
    # Tiny limits keep each real generation short; the point is the input space, not the answers.
    s = Server(n_ctx=512, max_tokens=4, max_n=2, max_k=2, max_queue=4)
    yield s
    s.stop()


def test_no_input_gives_a_server_error(server):
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=server.base, timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
            if response.status_code >= 400 and case.path.startswith("/v1/"):
                assert "error" in response.json()  # OpenAI-style error body
            checked.append(response.status_code)

        fuzz()
    assert len(checked) > 50
    assert any(c == 200 for c in checked) and any(400 <= c < 500 for c in checked)
