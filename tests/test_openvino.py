"""OpenVINO for real: the default model exported to INT4 (optimum-intel + NNCF in their venv, made
on first use), verified with the OpenVINO runtime, and served by openvino-genai behind the same API.
Decoding is forced (greedy, the format grammar) so nothing depends on what the model samples."""

import json
from pathlib import Path

import openai
import pytest
from conftest import make_adapter, tiny_llama
from live_server import Server
from openai_fields import extra

from edgereason.backends.base import SamplingParams
from edgereason.cpu import default_threads
from edgereason.export.config import OpenVINOExportConfig
from edgereason.export.files import ExportError
from edgereason.export.openvino_export import export_openvino
from edgereason.formats import get_format

pytestmark = pytest.mark.model
pytest.importorskip("openvino_genai", reason="the OpenVINO runtime is installed with edgereason[openvino]")

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "x"
    entry = export_openvino(OpenVINOExportConfig(out=out, base="smollm2-135m", format="reasoning-answer",
                                                 calibration_problems=8, answer_problems=4))
    return out, entry


def test_int4_export_is_verified_and_recorded(exported):
    out, entry = exported
    assert entry["status"] == "ok" and entry["kind"] == "openvino" and entry["quant"] == "int4"
    folder = out / entry["file"]
    assert (folder / "openvino_model.xml").is_file() and (folder / "openvino_tokenizer.xml").is_file()
    v = entry["verification"]
    assert v["tokenizer_match"] is True and v["chat_template_match"] is True
    assert v["top1_agreement"] >= 0.75 and v["mean_kl"] < 0.6
    assert set(v["answers"]) == {"answer_agreement", "format_agreement", "format_compliance", "answer_accuracy"}
    assert entry["worker"]["data_aware"] is True  # AWQ and scale estimation ran on the calibration traces
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]["openvino"]["sha256"] == entry["sha256"]
    assert not (out / ".staging" / entry["file"]).exists()


@pytest.fixture(scope="module")
def base_lora(default_model, tmp_path_factory):
    """base-lora with an adapter that moves the model by a KL of about 0.07 (so a dropped branch shows)."""
    root = tmp_path_factory.mktemp("ovbl")
    adapter = make_adapter(default_model.hf_dir, root / "adapter", std=0.1, targets=("q_proj", "k_proj", "v_proj", "down_proj"))
    out = root / "x"
    entry = export_openvino(OpenVINOExportConfig(out=out, base="smollm2-135m", adapter=adapter, format="reasoning-answer",
                                                 weights="base-lora", answer_problems=4))
    return out, entry


def test_base_lora_carries_the_base_gguf_blocks_and_the_adapter(base_lora):
    import openvino as ov

    out, entry = base_lora
    assert entry["status"] == "ok" and entry["quant"] == "base-lora" and entry["file"] == "openvino-base-lora"
    graft = entry["worker"]["base_lora"]
    assert graft["carried"] == {"Q4_1": 210, "Q8_0": 1} and graft["kept_float"] == 0  # every matrix of the Q4_1 GGUF
    assert graft["lora_modules"] == 4 * 30 and graft["lora_branches"] == 2 * 30  # q/k/v share one branch a layer
    # the trained model, not the base: the adapter alone moves it by KL ~0.07; the IR is within 0.01 of it
    assert entry["verification"]["mean_kl"] < 0.01 and entry["verification"]["top1_agreement"] >= 0.95
    # the CPU plugin keeps the blocks compressed: its matmuls read u4 (and the embedding's i8), not a float copy
    core = ov.Core()
    runtime = core.compile_model(core.read_model(str(out / entry["file"] / "openvino_model.xml")), "CPU").get_runtime_model()
    weights = [op.input_value(1).get_node().get_rt_info()["outputPrecisions"].astype(str) for op in runtime.get_ops()
               if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    assert weights.count("u4") == 210 and weights.count("i8") == 1


def test_base_lora_refuses_what_it_cannot_carry_before_any_work(tmp_path, default_model):
    hf_only = tiny_llama(tmp_path / "hf-only", default_model.hf_dir)  # Hugging Face weights, no GGUF of its own
    adapter = make_adapter(hf_only, tmp_path / "adapter", targets=("q_proj",))
    with pytest.raises(ExportError, match="has no GGUF"):
        export_openvino(OpenVINOExportConfig(out=tmp_path / "out", base=str(hf_only), adapter=adapter,
                                             weights="base-lora", answer_problems=0))
    assert not (tmp_path / "out" / "openvino-base-lora").exists()


def test_backend_answers_in_format_under_the_grammar(exported):
    from edgereason.backends.openvino import OpenVINOBackend

    out, entry = exported
    fmt = get_format()
    backend = OpenVINOBackend(str(out / entry["file"]), threads=default_threads())
    try:
        params = SamplingParams(max_tokens=96, temperature=0.0, stop=fmt.stop_sequences(), prefix=fmt.prefill,
                                grammar=fmt.grammar(after_prefill=True))
        (row,) = backend.chat([fmt.messages(QUESTION)], params)
        parsed = fmt.parse(row[0].text)
        assert parsed.valid or row[0].finish_reason == "length", row[0].text
        streamed = "".join(d.text for d in backend.stream(backend.render(fmt.messages(QUESTION), fmt.prefill), params))
        assert streamed and row[0].text.startswith(fmt.prefill + streamed)  # streaming gives the same text
        sampled = backend.complete([backend.render(fmt.messages(QUESTION), fmt.prefill)],
                                   SamplingParams(max_tokens=24, temperature=0.9, n=3, seed=5))[0]
        assert len(sampled) == 3
    finally:
        backend.close()


def test_served_behind_the_same_api(exported):
    out, entry = exported
    server = Server(backend="openvino", model=str(out / entry["file"]), limits={"max_tokens": 256})
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model=server.app.state.model_id, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=160, temperature=0)
        msg = r.choices[0].message
        assert extra(msg)["reasoning_content"] is not None and r.usage is not None and r.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model=server.app.state.model_id, stream=True, max_tokens=160,
                                                     temperature=0, messages=[{"role": "user", "content": QUESTION}]))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        vote = client.chat.completions.create(model=server.app.state.model_id, messages=[{"role": "user", "content": QUESTION}],
                                              max_tokens=160, extra_body={"voting": {"k": 3, "temperature": 0.8}})
        assert extra(vote)["voting"]["samples"] >= 1
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=server.app.state.model_id, messages=[{"role": "user", "content": "hi"}],
                                           logprobs=True, max_tokens=4)
        assert "logprobs" in str(err.value)
        health = server.engine.backend.health()
        assert health["device"] == "CPU"
    finally:
        server.stop()


def test_a_failed_export_leaves_nothing_half_written(tmp_path, default_model):
    odd = tiny_llama(tmp_path / "odd", default_model.hf_dir)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["NoSuchModelForCausalLM"], "no-such-model"
    (odd / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="OpenVINO export failed|base model"):
        export_openvino(OpenVINOExportConfig(out=out, base=str(odd), weights="int8", answer_problems=0))
    assert not (out / "openvino-int8").exists()
    assert not any(Path(out, ".staging").glob("*")) if (out / ".staging").exists() else True
