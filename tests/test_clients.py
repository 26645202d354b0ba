"""Real clients against a real edgereason server on 127.0.0.1 (llama-server engine, default model):
lm-evaluation-harness through its OpenAI-compatible backends, and the official OpenAI Node SDK.
Decoding is greedy, so what each client records can be compared with a direct `openai` call."""

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from live_server import Server
from openai_fields import extra

from edgereason.data import load_benchmark

pytestmark = pytest.mark.model

NODE_DIR = Path(__file__).parent / "node"
N_PROBLEMS = 20
MAX_TOKENS = 96


@pytest.fixture(scope="module")
def server():
    # No prompt cache: a reused prefix is evaluated in another batch shape, which can flip a greedy
    # near-tie, and lm-eval's requests come in its own order.
    s = Server(llama_cpp={"ctx_per_slot": 1024, "slots": 2, "prompt_cache": False})
    yield s
    s.stop()


def _task(tmp_path: Path, name: str) -> tuple[Path, list]:
    """A local lm-eval task over 20 GSM8K test problems (a JSON file, nothing fetched)."""
    problems = load_benchmark("gsm8k")[:N_PROBLEMS]
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": p.gold_answer}) + "\n" for p in problems))
    (tmp_path / f"{name}.yaml").write_text(f"""
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:"]
  max_gen_toks: {MAX_TOKENS}
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
""")
    return tmp_path, problems


@pytest.mark.parametrize("backend", ["local-chat-completions", "local-completions"])
def test_lm_eval_runs_end_to_end_and_records_what_the_server_returns(server, tmp_path, backend):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    name = f"edgereason_gsm8k_{backend.replace('-', '_')}"
    include, problems = _task(tmp_path, name)
    chat = backend == "local-chat-completions"
    endpoint = "chat/completions" if chat else "completions"
    results = simple_evaluate(
        model=backend,
        model_args=f"model=smollm2-135m,base_url={server.base}/v1/{endpoint},num_concurrent=1,max_retries=1,"
                   "tokenized_requests=False,tokenizer_backend=None",
        tasks=[name], task_manager=TaskManager(include_path=str(include)), apply_chat_template=chat,
        log_samples=True, limit=N_PROBLEMS,
    )
    samples = results["samples"][name]
    assert len(samples) == N_PROBLEMS
    assert "exact_match,none" in results["results"][name]
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    for s in samples[:5]:  # each recorded response is what a direct call returns
        prompt = f"Question: {s['doc']['question']}\nAnswer:"
        if chat:
            direct = client.chat.completions.create(
                model="smollm2-135m", messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
                temperature=0, stop=["Question:"], seed=1234).choices[0].message.content
        else:
            direct = client.completions.create(model="smollm2-135m", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                               stop=["Question:"], seed=1234).choices[0].text
        assert s["resps"][0][0] == direct


def _node_client() -> Path:
    """The `openai` npm package installed once under tests/node (CI installs it in .ci/run)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node 20 and npm are required for the Node SDK test (apt install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR / "stream_chat.mjs"


def test_node_sdk_streams_a_chat_with_reasoning(server):
    script = _node_client()
    question = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
    run = subprocess.run(["node", str(script), server.base + "/v1", question], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["reasoning"].strip() and out["content"].strip()
    first_content = out["order"].index("content")
    assert "reasoning" not in out["order"][first_content:]  # reasoning deltas all come before content
    assert out["finish_reason"] in ("stop", "length")
    assert out["usage"]["completion_tokens"] > 0 and out["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    # the same request without streaming gives the same split
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    msg = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": question}],
                                         max_tokens=256, temperature=0).choices[0].message
    assert msg.content == out["content"] and extra(msg)["reasoning_content"] == out["reasoning"]
