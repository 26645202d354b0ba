"""A real server on 127.0.0.1 with the default GGUF, driven by the official openai client."""

import json
import time

import httpx
import openai
import pytest
from live_server import Server

from edgereason.grading import answers_equal


@pytest.fixture(scope="module")
def server():
    s = Server(n_ctx=1024, max_tokens=256, max_k=8)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "Sara has 5 pencils and her friend gives her 6 more. How many pencils does Sara have?"}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    assert httpx.get(server.base + "/health").json()["status"] == "ok"


def test_reasoning_split_under_the_grammar(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=200, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["format_valid"] is True
    reasoning = choice.message.model_extra["reasoning_content"]
    assert "5 + 6 = 11" in reasoning and "<reasoning>" not in reasoning
    assert choice.message.content == "11"  # the answer alone, tags stripped
    assert r.usage.completion_tokens > 0


def test_streaming_matches_the_non_streamed_answer(client):
    kw = dict(model="smollm2-135m", messages=QUESTION, max_tokens=120, temperature=0)
    # llama.cpp reuses the cached prompt prefix of the previous request, and a prompt evaluated in
    # different pieces can round differently; a first call puts both requests on the same footing.
    client.chat.completions.create(**kw)
    full = client.chat.completions.create(**kw)
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
    assert reasoning.strip() == (full.choices[0].message.model_extra["reasoning_content"] or "").strip()
    if full.choices[0].model_extra["format_valid"]:
        assert content.strip() == full.choices[0].message.content.strip()


def test_majority_voting(client):
    r = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is 2 + 2?"}], max_tokens=160,
        extra_body={"voting": {"k": 4, "temperature": 0.7}}, seed=1,
    )
    vote = r.model_extra["voting"]
    assert vote["k"] == 4 and 1 <= vote["samples"] <= 4
    assert sum(v["count"] for v in vote["votes"]) + vote["invalid"] == vote["samples"]
    assert vote["votes"], "no sample produced a valid answer"
    assert answers_equal(vote["answer"], "4")  # a problem the model gets right
    if vote["votes"]:
        top = vote["votes"][0]
        assert vote["answer"] == top["answer"] == r.choices[0].message.content
        assert vote["share"] == pytest.approx(top["count"] / (vote["samples"] - vote["invalid"]), abs=1e-3)
    if vote["early_stopped"]:
        assert vote["samples"] < 4


def test_completions_endpoint(client):
    r = client.completions.create(model="smollm2-135m", prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 6


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ('{"model": "smollm2-135m", "messages": []}', 400, "messages"),
        ('{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "max_tokens"),
        ('{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "n": 99}', 400, "n "),
        ('{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "voting": {"k": 99}}', 400, "voting.k"),
        ('{"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, "temperature"),
        ('{"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
        ('{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404, "gpt-9"),
        ('{not json', 400, ""),
        ('[]', 400, ""),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, fragment):
    r = httpx.post(server.base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]


def test_prompt_longer_than_context(server):
    r = httpx.post(server.base + "/v1/chat/completions",
                   json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_metrics_exposed(server, client):
    text = httpx.get(server.base + "/metrics").text
    assert "edgereason_requests_total" in text and "edgereason_generated_tokens_total" in text


def test_api_key_and_full_queue():
    s = Server(n_ctx=512, api_key="sekret", max_queue=0)
    try:
        base = s.base + "/v1/chat/completions"
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        r = httpx.post(base, json=body)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = httpx.post(base, json=body, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.post(base, json=body, headers={"authorization": "Bearer sekret"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert httpx.get(s.base + "/health").status_code == 200  # health needs no key
    finally:
        s.stop()


def test_json_schema_response_format(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    r = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is 2 + 2? Reply in JSON."}],
        max_tokens=32, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content)["answer"], int)


def test_gateway_over_upstream_replicas_survives_a_dead_replica():
    """Two real edgereason servers as upstreams behind a third in upstream mode."""
    a, b = Server(n_ctx=1024, max_tokens=256), Server(n_ctx=1024, max_tokens=256)
    gw = Server(backend="upstream", upstream=[a.base + "/v1", b.base], upstream_policy="round_robin", max_tokens=256)
    try:
        c = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=128, temperature=0)
        msg = r.choices[0].message
        assert msg.model_extra.get("reasoning_content") is not None and msg.content.strip()
        r = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=128, n=2, temperature=0.7, seed=3)
        assert len(r.choices) == 2
        served = {x["url"]: x["served"] for x in httpx.get(gw.base + "/health").json()["replicas"]}
        assert all(n >= 1 for n in served.values()), served  # round robin used both
        a.stop()
        for _ in range(2):
            r = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=64, temperature=0)
            assert r.choices[0].message.content is not None
        health = httpx.get(gw.base + "/health").json()
        assert [x["healthy"] for x in health["replicas"]] == [False, True]
        b.stop()
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=32)
        assert err.value.status_code == 502 and err.value.body["type"] == "upstream_error"
        assert httpx.get(gw.base + "/health").status_code == 503
    finally:
        for s in (a, b, gw):
            s.stop()


def test_timeout_cancels_the_generation_itself():
    s = Server(n_ctx=4096, max_tokens=3000, timeout_s=1.5)
    try:
        body = {"model": "smollm2-135m", "max_tokens": 3000, "temperature": 1.0, "seed": 5, "reasoning": False,
                "messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]}
        t = time.perf_counter()
        r = httpx.post(s.base + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        assert time.perf_counter() - t < 10
        # Had the first generation kept running (3000 tokens, ~30 s here), this one would wait for it.
        t = time.perf_counter()
        r = httpx.post(s.base + "/v1/chat/completions", timeout=120, json={**body, "max_tokens": 8})
        assert r.status_code == 200
        assert time.perf_counter() - t < 8
    finally:
        s.stop()
