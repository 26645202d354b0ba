"""The edge server for real: edgereason in front of a managed llama-server on the default GGUF,
driven by the official openai client. Behaviour is forced (greedy decoding, the format grammar,
ignore_eos) and checked against what the servers record (llama-server's own metrics and slots,
the engine's counters), never against elapsed time."""

import concurrent.futures as cf
import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
from adapter_checks import PROMPT, assert_each_decodes_as_itself, first_logprob
from live_server import Server
from openai.types.chat import ChatCompletionMessageParam
from openai_fields import extra

from edgereason.cpu import default_threads
from edgereason.formats import get_format

pytestmark = pytest.mark.model

# A question whose greedy decoding under the format grammar ends within the limits (it is the system
# prompt's own example), so the split has a whole completion to work on.
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have now?"}]
FMT = get_format()


@pytest.fixture(scope="module")
def server():
    s = Server(llama_cpp={"ctx_per_slot": 1024, "slots": 4}, limits={"max_tokens": 512, "max_k": 8})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def engine_metrics(server) -> dict[str, float]:
    """llama-server's own Prometheus counters (it records what it did)."""
    out = {}
    for line in server.engine.backend.engine_metrics().splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split()
            out[name.removeprefix("llamacpp:")] = float(value)
    return out


def wait_idle(server, timeout_s: float = 60) -> None:
    """Until no llama-server slot is processing (what its /slots endpoint reports)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(s.get("is_processing") for s in server.engine.backend.slot_states()):
            return
        time.sleep(0.25)
    raise AssertionError("llama-server kept generating")


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smollm2-135m"]
    health = httpx.get(server.base + "/health").json()
    assert health["status"] == "ok" and health["backend"] == "llama-server" and health["slots"] == 4
    assert health["max_concurrency"] == 4 and health["ctx_per_slot"] == 1024
    # --gpu-layers reaches llama-server's own command line (what the process was started with)
    argv = Path(f"/proc/{health['pid']}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--n-gpu-layers") + 1] == b"auto" and health["gpu_offload"]["requested"] == "auto"


def test_reasoning_split_under_the_grammar(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=300, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and extra(choice)["format_valid"] is True
    reasoning, content = extra(choice.message)["reasoning_content"], choice.message.content
    # the split, not what the model happens to answer: the grammar kept the answer to one line, no tags
    assert reasoning.strip() and not any(tag in reasoning for tag in ("<reasoning>", "</reasoning>", "<answer>"))
    assert content.strip() and "\n" not in content.strip() and "<" not in content
    assert r.usage.completion_tokens > 0 and 0 < r.usage.completion_tokens_details.reasoning_tokens < r.usage.completion_tokens


def test_streaming_matches_the_non_streamed_answer(client):
    kw = dict(model="smollm2-135m", messages=QUESTION, max_tokens=300, temperature=0)
    full = client.chat.completions.create(**kw)
    reasoning, content, finish, usage = "", "", None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    assert reasoning.strip() == extra(full.choices[0].message)["reasoning_content"].strip()
    assert content.strip() == full.choices[0].message.content.strip() and finish == full.choices[0].finish_reason
    assert usage is not None and full.usage is not None, "no usage reported"
    assert usage.completion_tokens == full.usage.completion_tokens
    # the same prompt again: llama-server's cache served it
    assert usage.prompt_tokens_details is not None and (usage.prompt_tokens_details.cached_tokens or 0) > 0


def test_a_forced_answer_on_llama_server_keeps_to_the_answer_grammar(server, client):
    """force_answer on the real engine: the reasoning, 6 of max_tokens 30 (EOS ignored, so it is cut
    there), is closed by the server and the answer decoded under the format's answer grammar in the
    24 kept for it: marked forced, one line with no tag, and within max_tokens, streamed or not."""
    kw = dict(model="smollm2-135m", messages=QUESTION, max_tokens=30, temperature=0,
              extra_body={"force_answer": 24, "ignore_eos": True})
    r = client.chat.completions.create(**kw)
    choice = r.choices[0]
    assert extra(choice)["answer_forced"] is True and r.usage is not None
    assert r.usage.completion_tokens <= 30 and r.usage.completion_tokens_details.reasoning_tokens <= 6 + 2
    reasoning = extra(choice.message)["reasoning_content"]
    assert reasoning.strip() and "<" not in reasoning
    if choice.finish_reason == "stop":  # the answer closed within its 24 tokens: the grammar's one line
        assert extra(choice)["format_valid"] is True and "\n" not in choice.message.content.strip()
    assert "<" not in (choice.message.content or "").replace("</answer>", "")
    streamed = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            streamed += (c.delta.model_extra or {}).get("reasoning_content") or ""
    assert streamed.strip() == reasoning.strip()


def test_a_reasoning_the_model_ends_is_forced_at_once_on_llama_server(server, client):
    """The server constrains every reasoning request on llama-server. With force_answer, a model that
    ends its reasoning (EOS biased to the top) may end it there: forced after one token of reasoning,
    not made to write on to the reasoning's budget (40 of 64) by a grammar that refuses its EOS."""
    from llama_cpp import Llama

    from edgereason.models import resolve_model

    eos = Llama(str(resolve_model("smollm2-135m").gguf_path), vocab_only=True, verbose=False).token_eos()
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=64, temperature=0,
                                       logit_bias={str(eos): 100}, extra_body={"force_answer": 24})
    choice = r.choices[0]
    assert extra(choice)["answer_forced"] is True and r.usage is not None
    assert r.usage.completion_tokens_details.reasoning_tokens <= 3, r.usage  # one token, then the tags it was given


def test_concurrent_requests_are_decoded_together(server):
    """Requests that are in llama-server's slots at once share its decode calls. The overlap is
    observed in the slots (bounded wait), not assumed from timing: then fewer decodes than tokens
    follows from continuous batching, however busy the machine."""
    before = engine_metrics(server)
    body = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 160, "ignore_eos": True, "temperature": 0}
    backend = server.engine.backend
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(httpx.post, server.base + "/v1/completions", json=body, timeout=300) for _ in range(4)]
        most, deadline = 0, time.monotonic() + 120
        while most < 2 and not all(f.done() for f in futures):
            assert time.monotonic() < deadline, "no two requests were in llama-server's slots within 120 s"
            most = max(most, sum(bool(s.get("is_processing")) for s in backend.slot_states()))
            time.sleep(0.01)
        replies = [f.result(timeout=300) for f in futures]
    assert most >= 2, "every request finished before another started: nothing to batch (a 160-token run each)"
    assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 160 for r in replies)
    after = engine_metrics(server)
    tokens = after["tokens_predicted_total"] - before["tokens_predicted_total"]
    decodes = after["n_decode_total"] - before["n_decode_total"]
    assert tokens == 4 * 160
    assert decodes < tokens  # the sequences in the slots together shared llama_decode calls
    assert server.engine.peak_in_flight >= most


def test_a_vote_is_one_request_with_k_distinct_seeded_samples(server, client):
    before = engine_metrics(server)
    kw = dict(model="smollm2-135m", messages=QUESTION, max_tokens=96, seed=11,
              extra_body={"voting": {"k": 4, "temperature": 1.0, "early_stop": False}})
    r = client.chat.completions.create(**kw)
    after = engine_metrics(server)
    vote = extra(r)["voting"]
    assert vote["samples"] == 4 and not vote["early_stopped"]
    assert sum(v["count"] for v in vote["votes"]) + vote["invalid"] == 4
    assert r.usage.completion_tokens == after["tokens_predicted_total"] - before["tokens_predicted_total"]
    prompt_evaluated = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert prompt_evaluated <= r.usage.prompt_tokens  # one prompt evaluation shared by the 4 samples
    # n samples of one request differ from one another (children are seeded seed+1, seed+2, ...). A seed
    # does not make samples repeat across requests here: continuous batching changes how sequences
    # share llama_decode calls, and with them the last bits of the logits (vLLM behaves the same).
    r = client.completions.create(model="smollm2-135m", prompt="The story begins", max_tokens=24, temperature=1.0,
                                  seed=11, n=4, extra_body={"ignore_eos": True})
    assert len({c.text for c in r.choices}) == 4


def test_n_samples_take_adjacent_slots(default_model):
    """A batch's attention spans every KV stream between its lowest and highest slot, so the n=k
    request's parent is pinned to the lowest idle slot; llama-server's own choice on a fresh server
    is the last slot (least recently used, ties to the end), with the children at the start."""
    import asyncio

    from edgereason.backends.base import SamplingParams
    from edgereason.backends.llama_server import LlamaServerBackend

    backend = LlamaServerBackend(str(default_model.gguf_path), slots=6, ctx_per_slot=256, threads=default_threads(), poll=0)
    try:
        pid = backend.process.pid
        assert pid is not None
        args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")  # what the engine was started with
        assert args[args.index(b"--poll") + 1] == b"0"
        async def sample() -> int:
            params = SamplingParams(max_tokens=4, temperature=1.0, seed=3, ignore_eos=True)
            try:
                return len([c async for c in backend.asamples("The story begins", params, 3)])
            finally:  # its connections belong to this loop: close them here, not from close()'s own loop
                await backend.ahttp.aclose()

        assert asyncio.run(sample()) == 3
        used = sorted(s["id"] for s in backend.slot_states() if "id_task" in s)  # what llama-server records
        assert used == [0, 1, 2]
    finally:
        backend.close()


def test_a_disconnected_client_stops_its_generation(server):
    wait_idle(server)
    before = engine_metrics(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base + "/v1/completions", timeout=1.0,
                   json={"model": "smollm2-135m", "prompt": "Count:", "max_tokens": 500, "ignore_eos": True})
    wait_idle(server)
    produced = engine_metrics(server)["tokens_predicted_total"] - before["tokens_predicted_total"]
    assert produced < 500  # stopped when the client left, not run to max_tokens
    assert server.engine.counters["cancelled"] >= 1


def test_timeout_is_a_504_and_frees_the_slot():
    s = Server(llama_cpp={"ctx_per_slot": 4096, "slots": 1}, limits={"max_tokens": 3000, "timeout_s": 1.5})
    try:
        before = engine_metrics(s)
        body = {"model": "smollm2-135m", "max_tokens": 3000, "reasoning": False, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Count from 1 to 2000."}]}
        r = httpx.post(s.base + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        wait_idle(s)
        assert engine_metrics(s)["tokens_predicted_total"] - before["tokens_predicted_total"] < 3000
        r = httpx.post(s.base + "/v1/chat/completions", timeout=120, json={**body, "max_tokens": 8})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    finally:
        s.stop()


def test_a_killed_engine_is_restarted(server, client):
    backend = server.engine.backend
    old = backend.process.pid
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (backend.process.pid == old or not backend.process.ready.is_set()):
        r = httpx.get(server.base + "/health")
        assert r.status_code in (200, 503)  # 503 while it restarts, never a 500
        time.sleep(0.1)
    assert backend.process.pid != old and backend.process.restarts == 1
    r = client.completions.create(model="smollm2-135m", prompt="1, 2, 3,", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4
    assert httpx.get(server.base + "/health").json()["restarts"] == 1


def test_logprobs_on_both_endpoints(client):
    r = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=16, temperature=0,
                                       logprobs=True, top_logprobs=2, extra_body={"reasoning": False})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy: the top token was taken
    c = client.completions.create(model="smollm2-135m", prompt="1, 2, 3,", max_tokens=3, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and "".join(lp.tokens) == c.choices[0].text


def test_completions_endpoint_and_user_grammar(client):
    r = client.completions.create(model="smollm2-135m", prompt="The answer is", max_tokens=8, temperature=0.9, seed=3,
                                  extra_body={"grammar": 'root ::= " yes" | " no"'})
    assert r.choices[0].text in (" yes", " no")
    with pytest.raises(openai.BadRequestError, match="grammar"):
        client.completions.create(model="smollm2-135m", prompt="x", max_tokens=2, extra_body={"grammar": "root ::= ("})


def test_json_schema_response_format(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "enum": [4, 5]}}, "required": ["answer"]}
    r = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is 2 + 2? Reply in JSON."}],
        max_tokens=32, temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content)["answer"] in (4, 5)


def test_prompt_longer_than_the_context(server):
    r = httpx.post(server.base + "/v1/chat/completions",
                   json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_metrics_exposed(server, client):
    text = httpx.get(server.base + "/metrics").text
    for name in ("edgereason_requests_total", "edgereason_generated_tokens_total", "edgereason_peak_in_flight",
                 "edgereason_cancelled_total"):
        assert name in text


def test_gateway_over_two_replicas_spreads_concurrent_requests():
    """Two real edgereason servers as replicas behind a third in upstream mode."""
    a = Server(llama_cpp={"ctx_per_slot": 1024, "slots": 2})
    b = Server(llama_cpp={"ctx_per_slot": 1024, "slots": 2})
    gw = Server(backend="upstream", upstream={"urls": [a.base + "/v1", b.base], "per_replica": 2})
    try:
        c = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=128, temperature=0)
        assert extra(r.choices[0].message).get("reasoning_content") is not None
        body = {"model": "smollm2-135m", "prompt": "Once", "max_tokens": 32, "ignore_eos": True}
        with cf.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: httpx.post(gw.base + "/v1/completions", json=body, timeout=120), range(4)))
        assert all(x.status_code == 200 for x in replies)
        replicas = httpx.get(gw.base + "/health").json()["replicas"]
        # Deterministic whatever the timing: the chat went to the first replica, and the first of the four
        # found both idle and picked the one that had served none (least busy, ties broken by served).
        assert sum(x["served"] for x in replicas) == 5 and all(x["served"] >= 1 for x in replicas), replicas
        a.stop()
        for _ in range(2):
            r = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=64, temperature=0)
            assert r.choices[0].message.content is not None
        health = httpx.get(gw.base + "/health").json()
        assert [x["healthy"] for x in health["replicas"]] == [False, True]
        b.stop()
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=32)
        assert err.value.status_code == 502 and isinstance(err.value.body, dict)
        assert err.value.body["type"] == "upstream_error"
        assert httpx.get(gw.base + "/health").status_code == 503
    finally:
        for s in (a, b, gw):
            s.stop()


def test_gateway_sends_the_upstream_key_and_makes_up_an_n_shortfall(tmp_path, default_model):
    """Behind llama-cpp-python's own OpenAI server (it ignores `n` and here requires a key), a vote of
    k=4 still gets 4 samples, and the gateway's key opens the upstream."""
    from edgereason.servers import ManagedProcess, free_port, python_module

    port = free_port()
    upstream = ManagedProcess(
        python_module("llama_cpp.server", "--model", str(default_model.gguf_path), "--host", "127.0.0.1",
                      "--port", str(port), "--n_ctx", "2048", "--api_key", "upstream-secret"),
        f"http://127.0.0.1:{port}", tmp_path / "llama-cpp-python-server.log", health_path="/docs",  # keyless page
        restart=False, name="llama_cpp.server",
    )
    upstream.start()
    gw = keyless = None
    try:
        keyless = Server(backend="upstream", upstream={"urls": [upstream.base_url]})
        c = openai.OpenAI(base_url=keyless.base + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.completions.create(model="smollm2-135m", prompt="2 + 2 =", max_tokens=4)
        assert err.value.status_code in (401, 502)  # the upstream refused the gateway without its key
        gw = Server(backend="upstream", upstream={"urls": [upstream.base_url], "api_key": "upstream-secret"})
        c = openai.OpenAI(base_url=gw.base + "/v1", api_key="unused", max_retries=0)
        r = c.completions.create(model="smollm2-135m", prompt="Once upon a time", max_tokens=8, temperature=0.9,
                                 n=4, seed=3)
        assert len(r.choices) == 4 and sorted(ch.index for ch in r.choices) == [0, 1, 2, 3]
        vote = c.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=96, temperature=0.8,
                                         extra_body={"voting": {"k": 4}})
        assert extra(vote)["voting"]["samples"] == 4
    finally:
        for s in (gw, keyless):
            if s is not None:
                s.stop()
        upstream.stop()


def test_tools_pass_through_to_llama_server_and_come_back_as_tool_calls(client):
    """llama-server's Jinja templates parse tool calls; `tool_choice: required` constrains the answer
    to a call, so the shape is forced whatever the model would say."""
    tools = [{"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}]
    r = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "What is 3 + 4?"}],
                                       tools=tools, tool_choice="required", max_tokens=96, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name == "add" and set(json.loads(call.function.arguments)) >= {"a", "b"}
    # The tool's result goes back in history as a `tool` message and the model answers from it.
    follow = client.chat.completions.create(model="smollm2-135m", max_tokens=32, temperature=0, tools=tools, messages=[
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "7"},
    ], tool_choice="none")
    assert follow.choices[0].message.content


def test_engine_killed_under_concurrent_load_gives_no_500():
    """Chaos: 24 concurrent requests (plain, format-constrained, voted), the llama-server child killed
    with SIGKILL while they run. Every request ends in 200, 502, 503 or 504 (never a 500), the
    requests the kill cut fail as the engine's unavailability, and the server answers again once its
    engine is back."""
    s = Server(llama_cpp={"ctx_per_slot": 1024, "slots": 4}, limits={"max_tokens": 256, "max_k": 4, "max_queue": 64})
    statuses: list[int] = []
    try:
        backend = s.engine.backend
        old = backend.process.pid
        bodies = []
        for i in range(24):
            body = {"model": "smollm2-135m", "max_tokens": 96, "temperature": 0.7, "seed": i, "messages": QUESTION}
            if i % 3 == 0:
                body.update(reasoning=False, ignore_eos=True)
            elif i % 3 == 2:
                body["voting"] = {"k": 2}
            bodies.append(body)
        with httpx.Client(timeout=120) as http, cf.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(http.post, s.base + "/v1/chat/completions", json=b) for b in bodies]
            # Killed while llama-server is decoding: the streams in flight are cut mid-answer, the
            # requests behind them find no engine.
            deadline = time.monotonic() + 60
            while not any(slot.get("is_processing") for slot in backend.slot_states()):
                assert time.monotonic() < deadline, "llama-server started no request within 60 s"
                time.sleep(0.02)
            os.kill(old, signal.SIGKILL)
            for f in futures:
                r = f.result(timeout=180)
                statuses.append(r.status_code)
                if r.status_code != 200:
                    assert r.json()["error"]["type"] in ("service_unavailable", "upstream_error", "timeout_error")
        assert set(statuses) <= {200, 502, 503, 504}, statuses
        assert any(code != 200 for code in statuses), "the kill cut no request"
        deadline = time.monotonic() + 120
        while not backend.process.serving():
            assert time.monotonic() < deadline, "llama-server did not come back within 120 s"
            time.sleep(0.1)
        assert backend.process.pid != old
        r = httpx.post(s.base + "/v1/chat/completions", timeout=120,
                       json={"model": "smollm2-135m", "max_tokens": 4, "reasoning": False, "messages": QUESTION})
        assert r.status_code == 200
    finally:
        s.stop()
        print(f"outcomes after the kill: { {c: statuses.count(c) for c in sorted(set(statuses))} }")


def _two_lora_ggufs(tmp_path, default_model) -> dict:
    """Two random LoRAs (std 0.3: they move the logits far more than batching does), converted with
    llama.cpp's own converter."""
    from conftest import make_adapter

    from edgereason.export.llama_tools import convert_lora_to_gguf

    ggufs = {}
    for name, seed in (("math", 1), ("logic", 2)):
        peft = make_adapter(default_model.hf_dir, tmp_path / f"peft-{name}", seed=seed, std=0.3,
                            targets=("q_proj", "k_proj", "v_proj", "down_proj"))
        ggufs[name] = tmp_path / f"{name}.gguf"
        convert_lora_to_gguf(peft, default_model.hf_dir, ggufs[name], tmp_path / f"convert-{name}.log")
    return ggufs


def test_two_adapters_on_one_base_each_request_decodes_with_its_own(tmp_path, default_model):
    """`--adapter math=A --adapter logic=B`: each is a model id beside the base; concurrent requests for
    the three share the slots, and each request's first-token log-probability is its own model's
    (measured alone first; the adapters move it far more than batching does). A model id the server
    does not hold is a 404 naming the ones it has; a single server process holds all three."""
    ggufs = _two_lora_ggufs(tmp_path, default_model)
    s = Server(adapter=[f"{n}={p}" for n, p in ggufs.items()], llama_cpp={"ctx_per_slot": 512, "slots": 4})
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0)
        models = {m.id: m for m in c.models.list().data}
        assert list(models) == ["smollm2-135m", "math", "logic"]
        assert extra(models["math"])["parent"] == "smollm2-135m" and extra(models["math"])["root"] == str(ggufs["math"])
        assert_each_decodes_as_itself(c, list(models), rounds=4)
        with pytest.raises(openai.NotFoundError, match="'math', 'logic'"):
            c.completions.create(model="chemistry", prompt=PROMPT, max_tokens=1)
        health = httpx.get(s.base + "/health").json()
        assert health["files"]["adapters"] == {n: str(p) for n, p in ggufs.items()}
    finally:
        s.stop()


def test_adapters_are_added_and_removed_at_run_time_without_losing_a_request(tmp_path, default_model):
    """`--allow-adapter-updates`: POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes).
    A request in flight when an adapter is added finishes whole (the engine drains before llama-server
    restarts with the new set); the added adapter then decodes as itself (its first-token log-probability
    differs from the base's, which is unchanged); bad requests are 4xx that change nothing."""
    ggufs = _two_lora_ggufs(tmp_path, default_model)
    locked = Server(adapter=[f"math={ggufs['math']}"], llama_cpp={"ctx_per_slot": 512, "slots": 2})
    try:  # off by default: the routes read files the client names
        r = httpx.post(locked.base + "/v1/load_lora_adapter", json={"lora_name": "logic", "lora_path": str(ggufs["logic"])})
        assert r.status_code == 404
    finally:
        locked.stop()
    s = Server(adapter=[f"math={ggufs['math']}"], allow_adapter_updates=True, llama_cpp={"ctx_per_slot": 512, "slots": 2})
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0)
        base_before, math = first_logprob(c, "smollm2-135m"), first_logprob(c, "math")
        pid = httpx.get(s.base + "/health").json()["pid"]
        long = {"model": "math", "prompt": "Once", "max_tokens": 120, "ignore_eos": True, "temperature": 0}
        with cf.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, s.base + "/v1/completions", json=long, timeout=300)
            deadline = time.monotonic() + 60
            while s.engine.in_flight == 0:
                assert time.monotonic() < deadline, "the long request never started"
                time.sleep(0.01)
            r = httpx.post(s.base + "/v1/load_lora_adapter", timeout=300,
                           json={"lora_name": "logic", "lora_path": str(ggufs["logic"])})
            assert r.status_code == 200 and r.text == "Success: LoRA adapter 'logic' added successfully."
            done = in_flight.result(timeout=300)
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 120  # drained, not cut
        health = httpx.get(s.base + "/health").json()
        assert health["pid"] != pid and health["files"]["adapters"] == {n: str(p) for n, p in ggufs.items()}
        assert [m.id for m in c.models.list().data] == ["smollm2-135m", "math", "logic"]
        logic = first_logprob(c, "logic")
        assert abs(first_logprob(c, "smollm2-135m") - base_before) < 0.02 and abs(first_logprob(c, "math") - math) < 0.02
        assert min(abs(logic - base_before), abs(logic - math)) > 0.05, (base_before, math, logic)
        # refused, and nothing changes: a name taken, a file that is no GGUF LoRA, an adapter not loaded
        again = httpx.post(s.base + "/v1/load_lora_adapter", json={"lora_name": "math", "lora_path": str(ggufs["logic"])})
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        bad = httpx.post(s.base + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
        gone = httpx.post(s.base + "/v1/unload_lora_adapter", json={"lora_name": "chemistry"})
        assert gone.status_code == 404
        assert httpx.get(s.base + "/health").json()["files"]["adapters"] == {n: str(p) for n, p in ggufs.items()}
        r = httpx.post(s.base + "/v1/unload_lora_adapter", timeout=300, json={"lora_name": "math"})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'math' removed successfully."
        assert [m.id for m in c.models.list().data] == ["smollm2-135m", "logic"]
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="math", prompt=PROMPT, max_tokens=1)
        assert abs(first_logprob(c, "logic") - logic) < 0.02  # ids renumbered: logic is still logic
    finally:
        s.stop()


def test_adapter_settings_are_checked_before_anything_loads(tmp_path):
    from edgereason.serve.adapters import AdapterError, adapter_gguf
    from edgereason.serve.config import ServeConfig

    with pytest.raises(ValueError, match="need names"):
        ServeConfig(adapter=["a.gguf", "b.gguf"])
    with pytest.raises(ValueError, match="not both"):
        ServeConfig(adapter=["a.gguf", "math=b.gguf"])
    with pytest.raises(ValueError, match="names repeat: math"):
        ServeConfig(adapter=["math=a.gguf", "math=b.gguf"])
    with pytest.raises(ValueError, match="run on the llama.cpp, vllm backend, not transformers"):
        ServeConfig(adapter=["math=a.gguf"], backend="transformers")  # the registry says who can
    assert ServeConfig(adapter=["math=a", "logic=b"], backend="vllm").named_adapters == {"math": "a", "logic": "b"}
    assert ServeConfig(adapter="only.gguf").single_adapter == "only.gguf"
    with pytest.raises(AdapterError, match="neither a GGUF LoRA nor an export folder"):
        adapter_gguf("math", str(tmp_path), ServeConfig())
