"""Real exports of the default model: merge, llama.cpp convert/quantize, LoRA GGUF, manifest, safety."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_adapter, tiny_llama

from edgereason.config import ConfigError
from edgereason.cpu import default_threads
from edgereason.export.config import GGUFExportConfig, Int4ExportConfig, OpenVINOExportConfig
from edgereason.export.files import ExportError, atomic_output, require_free_space, sha256_file
from edgereason.export.gguf_export import export_gguf
from edgereason.export.llama_tools import convert_hf_to_gguf, quantize_gguf
from edgereason.export.merge import load_hf
from edgereason.formats import get_format

pytestmark = pytest.mark.model


def export(out: Path, **kw):
    """export gguf on the default model with small checks (4 answer problems, 8 calibration problems)."""
    kw = {"base": "smollm2-135m", "format": "reasoning-answer", "answer_problems": 4, "calibration_problems": 8, **kw}
    return export_gguf(GGUFExportConfig(out=out, **kw))


@pytest.fixture(scope="module")
def adapter(default_model, tmp_path_factory) -> Path:
    return make_adapter(default_model.hf_dir, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "x"
    result = export(out, adapter=adapter, quant="q8_0,q4_k_m")
    return out, result


def test_merge_gives_the_same_greedy_tokens_as_base_plus_adapter(default_model, adapter):
    import torch

    merged, tok = load_hf(default_model, adapter, merge=True)
    unmerged, _ = load_hf(default_model, adapter, merge=False)
    base, _ = load_hf(default_model)
    ids = tok("Question: 12 apples minus 5 apples. Answer:", return_tensors="pt")
    with torch.no_grad():
        a = merged.generate(**ids, max_new_tokens=24, do_sample=False)
        b = unmerged.generate(**ids, max_new_tokens=24, do_sample=False)
        base_logits = base(**ids).logits
        merged_logits = merged(**ids).logits
    assert a.tolist() == b.tolist()
    # The adapter really changed the model (otherwise equivalence would prove nothing).
    assert (merged_logits - base_logits).abs().max() > 1e-3


def test_gguf_round_trip_answers_in_the_reasoning_format(exported):
    """Each quant loads, keeps its chat template, and decodes a complete answer in the format under a
    grammar (reasoning bounded so the answer fits in the token budget whatever the model prefers)."""
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    out, result = exported
    assert not result.failed
    fmt = get_format("reasoning-answer")
    bounded = 'root ::= [^<]{1,60} "\\n</reasoning>\\n<answer>\\n" [0-9]{1,4} "\\n</answer>"'
    for q in ("q8_0", "q4_k_m"):
        llm = Llama(model_path=str(out / f"model-{q}.gguf"), n_ctx=1024, verbose=False)
        template = llm.metadata["tokenizer.chat_template"]  # the chat template survived conversion
        assert "<|im_start|>" in template
        # llama-cpp-python's own formatter on the bare question: the template adds the system prompt and prefill
        prompt = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")(
            messages=[{"role": "user", "content": "What is 6 + 5?"}]).prompt
        assert prompt.endswith(fmt.prefill) and fmt.system_prompt in prompt
        completion = llm.create_completion(prompt, max_tokens=160, temperature=0.0,
                                           grammar=LlamaGrammar.from_string(bounded, verbose=False))
        assert isinstance(completion, dict)  # not a stream
        choice = completion["choices"][0]
        parsed = fmt.parse(fmt.prefill + choice["text"])
        assert parsed.valid and (parsed.answer or "").strip().isdigit(), (q, choice, parsed.errors)
        llm.close()


def test_a_bare_llama_server_builds_the_prompt_edgereason_builds(exported, tmp_path):
    """The hand-off: the exported Q4_K_M under a bare `llama-server --jinja` (no gateway) renders, on its
    own /apply-template, exactly the prompt edgereason serve builds for a plain question, the user's own
    system message and a multi-turn history; edgereason's own rendering of the file is unchanged; the
    folder holds the template, the Modelfiles (a base + LoRA one with ADAPTER) and a model card."""
    import httpx
    from huggingface_hub import ModelCard

    from edgereason.backends.chat_template import ChatTemplate
    from edgereason.export.chat_setup import CHECK_CONVERSATIONS
    from edgereason.export.modelfile import parse_modelfile
    from edgereason.native import tool
    from edgereason.servers import ManagedProcess, free_port

    out, _ = exported
    fmt = get_format("reasoning-answer")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["chat_setup"]["system_prompt"] == "system" and manifest["chat_setup"]["ollama_template"]
    gguf = out / "model-q4_k_m.gguf"
    exported_template = ChatTemplate.from_gguf_file(gguf)
    assert exported_template.source == (out / "chat_template.jinja").read_text()
    original = ChatTemplate(manifest["chat_template"])
    port = free_port()
    server = ManagedProcess([str(tool("llama-server")), "-m", str(gguf), "--jinja", "--host", "127.0.0.1",
                             "--port", str(port), "-c", "2048", "-t", str(default_threads())], f"http://127.0.0.1:{port}",
                            tmp_path / "llama-server.log", restart=False, name="llama-server")
    server.start()
    try:
        for conv in CHECK_CONVERSATIONS:
            # what edgereason serve does with reasoning on: the format's system prompt when none, the prefill
            served = conv if conv[0]["role"] == "system" else [{"role": "system", "content": fmt.system_prompt}, *conv]
            want = exported_template.render(served) + fmt.prefill
            assert exported_template.render(served) == original.render(served)  # serve's prompts are unchanged
            got = httpx.post(f"{server.base_url}/apply-template", json={"messages": conv}, timeout=30).json()["prompt"]
            assert got == want, conv
    finally:
        server.stop()
    for name in ("Modelfile", "Modelfile.q8_0", "Modelfile.q4_k_m", "Modelfile.lora"):
        parsed = parse_modelfile((out / name).read_text())
        assert parsed["SYSTEM"] == [fmt.system_prompt] and 'stop "<|im_end|>"' in parsed["PARAMETER"]
    lora = parse_modelfile((out / "Modelfile.lora").read_text())
    assert lora["ADAPTER"] == ["./adapter-lora-f16.gguf"] and lora["FROM"][0].endswith(".gguf")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and "model-q4_k_m.gguf" in card.text
    assert manifest["handoff"]["card"] == "README.md" and "Modelfile" in manifest["handoff"]["modelfiles"]


def test_manifest_records_every_file_with_hashes_and_verification(exported, adapter):
    out, _ = exported
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "reasoning-answer"
    assert m["parameters"] > 100_000_000
    assert "<|im_start|>" in m["chat_template"]
    assert m["source"]["adapter"] == str(adapter) and len(m["source"]["base_sha256"]) == 64
    assert m["tools"]["llama-cpp-python"] and m["tools"]["transformers"]
    arts = m["artifacts"]
    assert set(arts) == {"merged-hf", "f16", "q8_0", "q4_k_m", "lora"}
    for name in ("f16", "q8_0", "q4_k_m", "lora"):
        a = arts[name]
        f = out / a["file"]
        assert a["status"] == "ok"
        assert a["size_bytes"] == f.stat().st_size and a["sha256"] == sha256_file(f)
        v = a["verification"]
        assert v["passed"] and 0 <= v["mean_kl"] and v["perplexity"] > 1
    assert arts["q8_0"]["verification"]["top1_agreement"] >= 0.9
    # Off the merged model's near-ties (top two logits within 1), f16 rounding flips nothing: a
    # misaligned position or margin would show here. Every quant reports the share it left out.
    assert arts["f16"]["verification"]["top1_confident"] == 1.0
    for name in ("f16", "q8_0", "q4_k_m", "lora"):
        v = arts[name]["verification"]
        assert 0 < v["near_tie_share"] < 0.5 and v["top1_confident"] >= v["top1_agreement"] - 0.02
    assert arts["f16"]["verification"]["tokenizer_match"] is True
    assert arts["f16"]["verification"]["chat_template_match"] is True
    # Quantization shrinks files in the expected order.
    sizes = [arts[q]["size_bytes"] for q in ("f16", "q8_0", "q4_k_m")]
    assert sizes == sorted(sizes, reverse=True)
    assert arts["q4_k_m"]["bits_per_weight"] < 7
    assert not (out / ".staging").exists()
    # q4_k_m was calibrated (imatrix on by default below q8_0), q8_0 was not; both answered the check.
    assert arts["q4_k_m"]["imatrix"] is True and arts["q8_0"]["imatrix"] is False
    imatrix = m["imatrix"]
    assert imatrix["sha256"] == sha256_file(out / "imatrix.gguf") and imatrix["calibration"]["traces"] == 16
    assert len(m["answer_check"]["problems"]) == 4
    for name in ("f16", "q8_0", "q4_k_m", "lora"):
        answers = arts[name]["verification"]["answers"]
        assert set(answers) == {"answer_agreement", "format_agreement", "format_compliance", "answer_accuracy"}
        assert all(0 <= x <= 1 for x in answers.values())
    # f16 is the merged model (teacher-forced top-1 agreement 1.0, above). Its greedy free-running answers
    # are compared on the format only: on 4 problems the answer text follows near-ties that any change of
    # batching flips (an f16 answer agreement of at least 0.75 with the fixed batches before, 0.5 with the
    # shared prefix, on the same files; its format agreement 1.0). Logit-level agreement is checked above.
    assert arts["f16"]["verification"]["answers"]["format_agreement"] >= 0.75


def test_the_imatrix_reaches_the_quantizer(exported, tmp_path):
    """The same F16 quantized with and without the importance matrix gives different weights; an IQ
    type without one is refused before llama-quantize runs."""
    out, _ = exported
    plain, calibrated = tmp_path / "plain.gguf", tmp_path / "calibrated.gguf"
    quantize_gguf(out / "model-f16.gguf", plain, "q4_k_m", tmp_path / "a.log")
    quantize_gguf(out / "model-f16.gguf", calibrated, "q4_k_m", tmp_path / "b.log", imatrix=out / "imatrix.gguf")
    assert sha256_file(plain) != sha256_file(calibrated)
    assert "imatrix" in (tmp_path / "b.log").read_text().lower()
    with pytest.raises(ExportError, match="needs an importance matrix"):
        quantize_gguf(out / "model-f16.gguf", tmp_path / "iq.gguf", "iq4_xs", tmp_path / "c.log")
    # A per-tensor override changes that tensor's type.
    from gguf import GGUFReader

    kept = tmp_path / "kept.gguf"
    quantize_gguf(out / "model-f16.gguf", kept, "q4_0", tmp_path / "d.log",
                  tensor_types={"token_embd": "q8_0", "attn_v": "q8_0"})
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(kept)).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.3.attn_v.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] != "Q8_0"


def test_ladder_keeps_the_smallest_candidate_that_meets_the_target(exported, adapter, tmp_path):
    out = tmp_path / "ladder"
    shutil.copytree(exported[0], out)
    # KL separates the two by 30x on the test adapter (q8_0 0.005, q4_0 0.16); top-1 only by 0.06
    result = export(out, adapter=adapter, ladder="q8_0,q4_0", target_kl=0.03, lora=False)
    m = json.loads((out / "manifest.json").read_text())
    candidates = {c["quant"]: c for c in m["ladder"]["candidates"]}
    assert candidates["q8_0"]["passed"] and not candidates["q4_0"]["passed"]  # 4 bits lose fidelity on 135M
    assert result.chosen == m["chosen"] == "model-q8_0.gguf" and result.rejected == ["q4_0"]
    assert m["artifacts"]["q4_0"]["status"] == "rejected" and not (out / "model-q4_0.gguf").exists()
    assert (out / "ladder.png").stat().st_size > 10_000
    from edgereason.models import resolve_model

    assert resolve_model(str(out)).gguf_path == out / "model-q8_0.gguf"  # serve and bench load the chosen one
    # A target nothing meets: an error naming it, the plot of how far each fell short, nothing verified removed.
    (out / "ladder.png").unlink()
    with pytest.raises(ExportError, match="no candidate"):
        export(out, adapter=adapter, ladder="q8_0,q4_0", target_kl=1e-9, lora=False)
    assert (out / "ladder.png").stat().st_size > 10_000
    assert (out / "model-q8_0.gguf").exists() and json.loads((out / "manifest.json").read_text())["chosen"] == "model-q8_0.gguf"


def test_the_accuracy_gate_pairs_each_candidate_with_the_merged_model_on_held_out_problems(exported, adapter, tmp_path):
    """--target-accuracy-drop: the merged model and each candidate answer the same held-out problems; the
    candidate's entry records both accuracies and the discordant counts, and the verdict follows them."""
    from edgereason.paired import mcnemar_exact

    out = tmp_path / "gated"
    shutil.copytree(exported[0], out)
    result = export(out, adapter=adapter, ladder="q8_0", target_accuracy_drop=100, accuracy_problems=6, lora=False)
    assert "q8_0" not in result.skipped  # verified before without the accuracy check: verified again with it
    m = json.loads((out / "manifest.json").read_text())
    check = m["accuracy_check"]
    assert check["data"] == "arith-dev" and len(check["problems"]) == 6
    assert m["ladder"]["targets"]["accuracy_drop_points"] == 100
    candidate = {c["quant"]: c for c in m["ladder"]["candidates"]}["q8_0"]
    acc = candidate["accuracy"]
    assert acc == m["artifacts"]["q8_0"]["verification"]["accuracy"] and acc["problems"] == 6
    assert acc["reference_accuracy"] == check["answer_accuracy"]
    assert round(6 * (acc["accuracy"] - acc["reference_accuracy"])) == acc["only_it"] - acc["only_reference"]
    n = acc["only_it"] + acc["only_reference"]
    assert acc["p_value"] == mcnemar_exact([True] * acc["only_reference"] + [False] * acc["only_it"],
                                           [False] * acc["only_reference"] + [True] * acc["only_it"])[2]
    assert candidate["passed"] == (not (acc["drop_points"] > 0 and acc["p_value"] < 0.05)) and n <= 6
    assert (out / "ladder.png").stat().st_size > 10_000


def test_ladder_weighs_base_plus_lora_by_what_serving_loads(exported, adapter, default_model, tmp_path):
    """The adapter on the base GGUF is a candidate, sized as base + adapter; chosen, serving loads both."""
    from edgereason.backends.llamacpp import LlamaCppBackend
    from edgereason.models import resolve_model

    out = tmp_path / "ladder"
    shutil.copytree(exported[0], out)
    result = export(out, adapter=adapter, ladder="q8_0", target_kl=0.03)
    m = json.loads((out / "manifest.json").read_text())
    candidates = {c["quant"]: c for c in m["ladder"]["candidates"]}
    base = default_model.gguf_path.stat().st_size
    assert candidates["lora"]["size_bytes"] == base + (out / "adapter-lora-f16.gguf").stat().st_size
    assert candidates["lora"]["passed"] and candidates["q8_0"]["passed"]  # the f16 delta on the exact base
    assert base < candidates["lora"]["size_bytes"] < candidates["q8_0"]["size_bytes"]
    assert result.chosen == m["chosen"] == "adapter-lora-f16.gguf" and not (out / "model-q8_0.gguf").exists()
    resolved = resolve_model(str(out))
    assert resolved.gguf_path == default_model.gguf_path and resolved.adapter == out / "adapter-lora-f16.gguf"
    as_hf = resolve_model(str(out), need_hf=True)  # transformers and vLLM get the same model, merged, not the bare base
    assert as_hf.hf_dir == out / "merged-hf" and as_hf.adapter is None
    backend = LlamaCppBackend(str(out), n_ctx=256)  # the in-process engine picks the LoRA up from the export
    try:
        assert str(backend.lora_path) == str(out / "adapter-lora-f16.gguf")
    finally:
        backend.close()


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="unknown type"):
        GGUFExportConfig(out=tmp_path, quant="q4_k_m,q9_9")
    assert GGUFExportConfig(out=tmp_path, quant=["q8_0,q4_k_m", "q6_k"]).quant == ["q8_0", "q4_k_m", "q6_k"]
    assert GGUFExportConfig(out=tmp_path, tensor_type="attn_v=q8_0,ffn_down=q6_k").overrides == {
        "attn_v": "q8_0", "ffn_down": "q6_k"}
    with pytest.raises(ValueError, match="PATTERN=TYPE"):
        GGUFExportConfig(out=tmp_path, tensor_type="attn_v")
    with pytest.raises(ValueError, match="unknown type"):
        GGUFExportConfig(out=tmp_path, tensor_type="attn_v=q9")
    with pytest.raises(ConfigError, match="out"):
        GGUFExportConfig.load(None)
    with pytest.raises(ValueError, match="lora_correction corrects NNCF's INT4"):
        OpenVINOExportConfig(out=tmp_path, weights="int8", lora_correction=True)
    with pytest.raises(ValueError, match="give --adapter"):
        OpenVINOExportConfig(out=tmp_path, weights="base-lora")
    with pytest.raises(ValueError, match="ratio mixes"):
        OpenVINOExportConfig(out=tmp_path, weights="base-lora", adapter=tmp_path, ratio=0.5)


def test_lora_gguf_loads_with_lora_path_and_changes_the_output(exported, default_model):
    from llama_cpp import Llama

    out, _ = exported
    prompt = "Question: 12 apples minus 5 apples. Answer:"
    plain = Llama(model_path=str(default_model.gguf_path), n_ctx=256, verbose=False, logits_all=True)
    with_lora = Llama(model_path=str(default_model.gguf_path), n_ctx=256, verbose=False, logits_all=True,
                      lora_path=str(out / "adapter-lora-f16.gguf"))
    toks = plain.tokenize(prompt.encode())
    plain.eval(toks)
    with_lora.eval(toks)
    import numpy as np

    diff = np.abs(np.asarray(plain.scores[: len(toks)]) - np.asarray(with_lora.scores[: len(toks)])).max()
    assert diff > 1e-3


def test_rerun_skips_verified_artifacts(exported, adapter):
    out, _ = exported
    before = (out / "model-q4_k_m.gguf").stat().st_mtime_ns
    result = export(out, adapter=adapter, quant="q4_k_m")
    assert {"merged-hf", "f16", "q4_k_m", "lora"} <= set(result.skipped)
    assert (out / "model-q4_k_m.gguf").stat().st_mtime_ns == before


def test_failed_quantization_never_touches_a_good_artifact(exported, tmp_path):
    out, _ = exported
    good = tmp_path / "model-q4_0.gguf"
    shutil.copy(out / "model-q4_k_m.gguf", good)
    digest = sha256_file(good)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 1000)  # a truncated file: llama.cpp refuses it
    with pytest.raises(ExportError, match="quantization"):
        quantize_gguf(broken, good, "q4_0", tmp_path / "q.log")
    assert sha256_file(good) == digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_output_removes_partial_files_on_error(tmp_path):
    final = tmp_path / "a.bin"
    final.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert final.read_text() == "good"
    assert list(tmp_path.iterdir()) == [final]


def test_clear_errors_before_any_damage(tmp_path, default_model):
    with pytest.raises(ExportError, match="does not exist"):
        export(tmp_path / "o", adapter=tmp_path / "missing")
    not_adapter = tmp_path / "not-adapter"
    not_adapter.mkdir()
    with pytest.raises(ExportError, match="no adapter_config.json"):
        export(tmp_path / "o", adapter=not_adapter)
    with pytest.raises(ExportError, match="need an importance matrix"):
        export(tmp_path / "o", quant="iq4_xs", imatrix=False)
    with pytest.raises(ValueError, match="evaluation only"):
        export(tmp_path / "o", quant="q4_k_m", calibration_data=["gsm8k"])
    with pytest.raises(ExportError, match="not enough disk space"):
        require_free_space(tmp_path, shutil.disk_usage(tmp_path).free + 2**40, "a test")

    # An adapter trained on another (smaller) base model: a shape mismatch, reported as such.
    tiny_dir = tiny_llama(tmp_path / "tiny", default_model.hf_dir)
    wrong = make_adapter(tiny_dir, tmp_path / "wrong-adapter")
    with pytest.raises(ExportError, match="does not fit base model"):
        export(tmp_path / "o2", adapter=wrong)
    assert not (tmp_path / "o2" / "model-f16.gguf").exists()

    # An architecture llama.cpp's converter does not know: its message comes through, no output file.
    odd = tmp_path / "odd"
    shutil.copytree(tiny_dir, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["architectures"] = ["NoSuchModelForCausalLM"]
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match="convert_hf_to_gguf.py"):
        convert_hf_to_gguf(odd, tmp_path / "odd.gguf", tmp_path / "odd.log")
    assert not (tmp_path / "odd.gguf").exists()
    assert "NoSuchModelForCausalLM" in (tmp_path / "odd.log").read_text()


def test_int4_checkpoint_reloads_with_transformers_and_is_recorded(exported, adapter):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgereason.export.int4 import export_int4

    out, _ = exported
    entry = export_int4(Int4ExportConfig(out=out, base="smollm2-135m", adapter=adapter, format="reasoning-answer",
                                         answer_problems=4, compute_dtype="fp32"))
    assert entry["status"] == "ok" and entry["quant"] == "bnb-nf4"
    assert entry["verification"]["top1_agreement"] >= 0.75
    folder = out / entry["file"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    model = AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu")
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("2 + 2 =", return_tensors="pt")
    with torch.no_grad():
        assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4
    # INT4 weights are smaller than the float32 merged checkpoint.
    m = json.loads((out / "manifest.json").read_text())
    assert entry["size_bytes"] < m["artifacts"]["merged-hf"]["size_bytes"] / 2


def test_int4_loads_in_vllm(exported):
    pytest.importorskip("vllm", reason="vLLM is not installed (needs a GPU build; checked on the device machine)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vLLM serves bitsandbytes checkpoints on CUDA GPUs only; no GPU on this machine")
    from vllm import LLM, SamplingParams

    out, _ = exported
    llm = LLM(model=str(out / "int4-nf4"), quantization="bitsandbytes", max_model_len=512, gpu_memory_utilization=0.3)
    text = llm.generate(["2 + 2 ="], SamplingParams(max_tokens=8, temperature=0))[0].outputs[0].text
    assert text


def test_an_adapter_finds_its_run_record_beside_it_or_above_a_checkpoint(tmp_path):
    from edgereason.export.manifest import run_record

    run = tmp_path / "runs" / "x"
    (run / "adapter").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-75").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {"model": "smollm2-135m"}}))
    assert run_record(run / "adapter")["config"]["model"] == "smollm2-135m"
    assert run_record(run / "checkpoints" / "checkpoint-75")["config"]["model"] == "smollm2-135m"
    assert run_record(tmp_path) == {}
