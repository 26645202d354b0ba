"""The OpenAI-compatible API over the deterministic scripted backend: a real uvicorn server on
127.0.0.1 and the official `openai` client, no model. What the engine must do is forced by the
script (exact texts, token by token), so every assertion is exact."""

import json
import time
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai_fields import extra

from edgereason.backends.scripted import ScriptedBackend
from edgereason.formats import get_format
from edgereason.serve.app import ThreadedServer, create_app, serve_in_thread
from edgereason.serve.config import EngineLimits
from edgereason.serve.engine import ReasoningEngine

FMT = get_format()
ANSWER = "Tom has 3 + 4 = 7 apples.\n</reasoning>\n<answer>\n7\n</answer>"  # what follows the prefill
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"}]


def script(prompt: str, seed: int) -> str:
    if prompt.endswith("<answer>\n"):  # a forced answer: the reasoning was closed for the model
        return "7\n</answer>"
    if "BROKEN" in prompt:
        return ANSWER if seed >= 1000 else "no tags at all"  # invalid first, valid on the retry
    return ANSWER


@dataclass
class Served:
    """The API on a scripted backend, with the engine and backend whose records the tests read."""

    threaded: ThreadedServer
    engine: ReasoningEngine
    backend: ScriptedBackend

    @property
    def base(self) -> str:
        return self.threaded.base


@pytest.fixture(scope="module")
def server():
    backend = ScriptedBackend(script, token_delay_s=0.002, max_concurrency=2, context_length=2048, model_name="scripted")
    engine = ReasoningEngine(backend, FMT, EngineLimits(max_tokens=256, max_queue=4, format_retries=1))
    s = Served(serve_in_thread(create_app(engine, "scripted", cors_origins=["https://tutor.example"])), engine, backend)
    yield s
    s.threaded.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def post(server, body, path="/v1/chat/completions", **kw):
    return httpx.post(server.base + path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                      headers={"content-type": "application/json"}, timeout=30, **kw)


def test_reasoning_split_under_both_field_names(client):
    r = client.chat.completions.create(model="scripted", messages=USER, max_tokens=64)
    msg = r.choices[0].message
    assert msg.content == "7" and r.choices[0].finish_reason == "stop"
    assert extra(msg)["reasoning_content"] == extra(msg)["reasoning"] == "Tom has 3 + 4 = 7 apples."
    assert extra(r.choices[0])["format_valid"] is True


def test_usage_counts_every_attempt_and_the_reasoning(client):
    r = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "BROKEN question"}],
                                       max_tokens=64, seed=1)
    assert extra(r.choices[0])["attempts"] == 2 and r.choices[0].message.content == "7"
    first, second = len("no tags at all".split()), len(ANSWER.split())
    assert r.usage.completion_tokens == first + second
    assert r.usage.completion_tokens_details.reasoning_tokens == len("Tom has 3 + 4 = 7 apples.".split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_splits_reasoning_and_reports_finish_and_usage(client):
    reasoning, content, finish, usage = "", "", None, None
    for chunk in client.chat.completions.create(model="scripted", messages=USER, max_tokens=64, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            extra = c.delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            assert extra.get("reasoning") == extra.get("reasoning_content")
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    assert reasoning.strip() == "Tom has 3 + 4 = 7 apples." and content.strip() == "7" and finish == "stop"
    assert usage is not None, "no usage chunk"
    assert usage.completion_tokens == len(ANSWER.split())


def test_a_stream_cut_by_max_tokens_says_length(client):
    finish = None
    for chunk in client.chat.completions.create(model="scripted", messages=USER, max_tokens=3, stream=True):
        for c in chunk.choices:
            finish = c.finish_reason or finish
    assert finish == "length"


def test_completions_stream_and_usage(client):
    text, finish, usage = "", None, None
    for chunk in client.completions.create(model="scripted", prompt="count", max_tokens=4, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    assert usage is not None, "no usage chunk"
    assert text == "Tom has 3 +" and finish == "length" and usage.completion_tokens == 4
    r = client.completions.create(model="scripted", prompt="count", max_tokens=4)
    assert r.choices[0].text == text and r.usage.completion_tokens == 4


async def test_async_client(server):
    client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    r = await client.chat.completions.create(model="scripted", messages=USER, max_tokens=64)
    assert r.choices[0].message.content == "7"
    pieces = [c.choices[0].delta.content async for c in await client.chat.completions.create(
        model="scripted", messages=USER, max_tokens=64, stream=True) if c.choices]
    assert "".join(p or "" for p in pieces).strip() == "7"


def test_history_with_reasoning_tool_results_and_null_content(client):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": None, "reasoning_content": "3 + 4 = 7",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 3, \"b\": 4}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "7"},
        {"role": "assistant", "content": "7", "reasoning": "the tool said 7"},
        {"role": "user", "content": "And 7 + 1?"},
    ]
    r = client.chat.completions.create(model="scripted", messages=messages, max_tokens=64)
    assert r.choices[0].message.content == "7"


def test_voting_counts_every_sample(client):
    r = client.chat.completions.create(model="scripted", messages=USER, max_tokens=64,
                                       extra_body={"voting": {"k": 4, "early_stop": False}})
    vote = extra(r)["voting"]
    assert vote["answer"] == "7" and vote["samples"] == 4 and vote["share"] == 1.0
    assert r.usage.completion_tokens == 4 * len(ANSWER.split())


def test_a_verified_vote_reports_each_samples_check(client):
    r = client.chat.completions.create(model="scripted", messages=USER, max_tokens=64,
                                       extra_body={"voting": {"k": 3, "early_stop": False, "mode": "verified"}})
    vote = extra(r)["voting"]
    assert vote["mode"] == "verified" and vote["answer"] == "7" and vote["note"] is None
    assert vote["votes"][0]["weight"] == pytest.approx(3.0)  # three consistent samples, 1.0 each
    assert [c["status"] for c in vote["checks"]] == ["consistent"] * 3
    assert all(c["score"] == 1.0 and c["claims"] == 1 and c["answer"] == "7" for c in vote["checks"])
    plain = client.chat.completions.create(model="scripted", messages=USER, max_tokens=64,
                                           extra_body={"voting": {"k": 2}})
    assert extra(plain)["voting"]["mode"] == "majority" and extra(plain)["voting"]["checks"] is None


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "scripted", "messages": USER, "voting": {"k": 2, "mode": "loudest"}}, 400, "voting.mode"),
    ({"model": "scripted", "messages": USER, "temperatur": 0.5}, 400, "temperatur"),  # a typo is not ignored
    ({"model": "scripted", "messages": USER, "logprobs": True}, 400, "logprobs"),  # the engine cannot give them
    ({"model": "scripted", "messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"model": "scripted", "messages": USER, "audio": {"voice": "alloy"}}, 400, "audio"),
    ({"model": "scripted", "messages": USER, "n": 2, "stream": True}, 400, "stream"),
    ({"model": "scripted", "messages": USER, "top_logprobs": 3}, 400, "top_logprobs"),
    ({"model": "scripted", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "image_url"),
    ({"model": "scripted", "messages": [{"role": "tool", "content": "7"}]}, 400, "tool_call_id"),
    ({"model": "scripted", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "scripted", "messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ({"model": "scripted", "prompt": [1, 2, 3]}, 400, "prompt"),
    ({"model": "nope", "messages": USER}, 404, "nope"),
])
def test_fields_that_cannot_be_honoured_are_named_in_a_4xx(server, body, status, fragment):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    r = post(server, body, path)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"] + str(r.json()["error"]["param"])


@pytest.mark.parametrize("raw", [
    b'{"model": "scripted", "messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
    b'{"model": "scripted", "messages": [{"role": "user", "content": "a\\udc00b"}], "stop": "\\ud83d"}',
    b'{"model": "scripted", "messages": [{"role": "user", "content": "\xff\xfe"}]}',  # not UTF-8
    b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}',  # cut off
])
def test_text_that_is_not_unicode_is_a_400_not_a_500(server, raw):
    r = post(server, raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_control_characters_and_huge_tokens_are_fine(server):
    for content in ("a\u0000b\u0007c", "x" * 100_000):
        r = post(server, {"model": "scripted", "messages": [{"role": "user", "content": content}], "max_tokens": 8})
        assert r.status_code == 200, r.text


def test_models_by_id_and_cors(server):
    assert httpx.get(server.base + "/v1/models/scripted").json()["id"] == "scripted"
    assert httpx.get(server.base + "/v1/models/other").status_code == 404
    pre = httpx.options(server.base + "/v1/chat/completions", headers={
        "Origin": "https://tutor.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://tutor.example"
    r = httpx.get(server.base + "/v1/models", headers={"Origin": "https://tutor.example"})
    assert r.headers["access-control-allow-origin"] == "https://tutor.example"
    r = httpx.get(server.base + "/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_a_client_that_disconnects_cancels_its_generation(server):
    before = server.engine.counters["cancelled"]
    calls = len(server.backend.calls)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base + "/v1/completions", timeout=0.3,
                   json={"model": "scripted", "prompt": "long", "max_tokens": 200, "ignore_eos": True})
    for _ in range(300):
        new = server.backend.calls[calls:]
        if new and all(c.finished is not None for c in new) and server.engine.counters["cancelled"] > before:
            break
        time.sleep(0.02)
    new = server.backend.calls[calls:]
    assert server.engine.counters["cancelled"] == before + 1
    assert new and new[0].cancelled  # the engine stopped generating for nobody


def test_openapi_declares_request_and_response_models(server):
    spec = httpx.get(server.base + "/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert "ChatCompletionResponse" in json.dumps(chat["responses"]["200"])
    assert "ErrorResponse" in json.dumps(chat["responses"]["429"])
    assert "ModelCard" in json.dumps(spec["paths"]["/v1/models/{model_id}"]["get"]["responses"]["200"])


def test_api_key_and_full_queue():
    backend = ScriptedBackend("a b c d", token_delay_s=0.01, max_concurrency=1)
    engine = ReasoningEngine(backend, FMT, EngineLimits(max_queue=0))
    s = serve_in_thread(create_app(engine, "scripted", api_key="sekret"))
    try:
        body = {"model": "scripted", "prompt": "x", "max_tokens": 300, "ignore_eos": True}
        assert httpx.post(s.base + "/v1/completions", json=body).status_code == 401
        assert httpx.post(s.base + "/v1/completions", json=body, headers={"authorization": "Bearer no"}).status_code == 401
        auth = {"authorization": "Bearer sekret"}
        import threading

        busy = threading.Thread(target=lambda: httpx.post(s.base + "/v1/completions", json=body, headers=auth, timeout=30))
        busy.start()
        while engine.in_flight == 0:
            time.sleep(0.005)
        r = httpx.post(s.base + "/v1/completions", json={**body, "max_tokens": 2}, headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert httpx.get(s.base + "/health").status_code == 200  # health needs no key
        busy.join()
    finally:
        s.stop()


# ---- the backend registry ------------------------------------------------------------------------


class _EchoBackend(ScriptedBackend):
    """An engine from outside the package: the convention is `Class(model, **backend_options)`."""

    name = "echo-test"

    def __init__(self, model: str, **options) -> None:
        super().__init__(model_name=model, **options)


def test_an_out_of_tree_backend_is_served_like_a_built_in_one():
    from live_server import Server

    from edgereason.backends import BACKENDS, Capability, register_backend
    from edgereason.serve.config import ServeConfig

    register_backend("echo-test", _EchoBackend, serve_name="echo", capabilities={Capability.LOGIT_BIAS},
                     description="a test engine")
    server = None
    try:
        with pytest.raises(ValueError, match="serve name 'echo' is already the echo-test backend's"):
            register_backend("echo-2", _EchoBackend, serve_name="echo")
        server = Server(backend="echo", model="echo-model",
                        backend_options={"script": ["2 + 3 = 5.\n</reasoning>\n<answer>\n5\n</answer>"]})
        assert server.engine.backend.name == "echo-test"
        base = server.base + "/v1/chat/completions"
        ask = {"model": "echo-model", "messages": [{"role": "user", "content": "2 + 3?"}], "max_tokens": 64}
        r = httpx.post(base, json=ask, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip() == "5"
        # its declared capabilities decide what the server accepts: logit_bias yes, tools and logprobs no
        assert httpx.post(base, json={**ask, "logit_bias": {"1": -1}}, timeout=30).status_code == 200
        refused = httpx.post(base, json={**ask, "logprobs": True}, timeout=30)
        assert refused.status_code == 400 and "echo-test" in refused.json()["error"]["message"]
    finally:
        if server is not None:
            server.stop()
        BACKENDS.unregister("echo-test")
    with pytest.raises(ValueError, match="unknown backend 'echo'; choose one of: llama.cpp, "):
        ServeConfig(backend="echo")


def test_the_backends_docs_table_is_the_registry():
    import edgereason.backends as backends

    assert backends.backends_table() in (backends.__doc__ or "")
    assert backends.serve_backends()["llama.cpp"] == "llama-server"


def test_a_reasoning_cut_by_max_tokens_gets_a_forced_answer_streamed_or_not(server, client):
    """force_answer 8 of max_tokens 11: the reasoning, cut at 3 tokens, is closed by the server, the model
    writes the answer (2 tokens), the choice says so, and a stream carries the same text; without it,
    the cut stays."""
    before = server.engine.counters["forced_answers"]
    r = client.chat.completions.create(model="scripted", messages=USER, max_tokens=11, extra_body={"force_answer": 8})
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == "7"
    assert extra(choice.message)["reasoning_content"] == "Tom has 3"
    assert extra(choice)["answer_forced"] is True and extra(choice)["format_valid"] is True
    assert r.usage is not None and r.usage.completion_tokens == 3 + 2  # the tags the server wrote are not counted
    forced = [c for c in server.backend.calls if c.prompt.endswith("<answer>\n")]
    assert forced[-1].params.max_tokens == 8 and forced[-1].params.grammar is None

    reasoning, content, last = "", "", None
    for chunk in client.chat.completions.create(model="scripted", messages=USER, max_tokens=11, stream=True,
                                                extra_body={"force_answer": 8}):
        for c in chunk.choices:
            reasoning += extra(c.delta).get("reasoning_content") or ""
            content += c.delta.content or ""
            last = c if c.finish_reason else last
    assert reasoning.strip() == "Tom has 3" and content.strip() == "7"
    assert last is not None and last.finish_reason == "stop" and extra(last)["answer_forced"] is True
    assert server.engine.counters["forced_answers"] == before + 2

    plain = client.chat.completions.create(model="scripted", messages=USER, max_tokens=3)
    assert plain.choices[0].finish_reason == "length" and extra(plain.choices[0]).get("answer_forced") is None
    refused = post(server, {"model": "scripted", "messages": USER, "reasoning": False, "force_answer": 8})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "force_answer"
    for body in ({"force_answer": 1000}, {"force_answer": 8, "max_tokens": 8}):  # no room left to reason
        too_many = post(server, {"model": "scripted", "messages": USER, **body})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "force_answer", too_many.text
