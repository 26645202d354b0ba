"""The export hand-off without a model: the reasoning setup wrapped around real chat templates, the
Ollama TEMPLATE rendered by Go's own text/template against the Jinja one, the Modelfile and the model
card parsed by huggingface_hub, and the push's file selection and offline refusal."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgereason.backends.chat_template import ChatTemplate, TemplateError
from edgereason.export.chat_setup import (
    CHECK_CONVERSATIONS,
    SetupError,
    setup_messages,
    turns,
    wrap_template,
)
from edgereason.export.modelfile import ModelfileSpec, go_template, modelfile, parse_modelfile
from edgereason.formats import get_format
from edgereason.models import EMBEDDED, embedded_gguf

FMT = get_format("reasoning-answer")
# A template that refuses a system message outright (as some do): the setup folds into the first user turn.
REFUSES_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                  "supported') }}{% endif %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def smollm2_template() -> ChatTemplate:
    return ChatTemplate.from_gguf_file(embedded_gguf(EMBEDDED["smollm2-135m"]))


def templates() -> dict[str, ChatTemplate]:
    return {"smollm2 (ChatML)": smollm2_template(), "gemma3": ChatTemplate(EMBEDDED["gemma3-270m"].chat_template or "", "<bos>", "<eos>"),
            "refuses system": ChatTemplate(REFUSES_SYSTEM)}


@pytest.mark.parametrize("name", ["smollm2 (ChatML)", "gemma3", "refuses system"])
def test_the_wrapped_template_adds_the_setup_for_runtimes_and_nothing_for_edgereason(name):
    original = templates()[name]
    source, mode = wrap_template(original.source, FMT, True, original.bos_token, original.eos_token)
    wrapped = ChatTemplate(source, original.bos_token, original.eos_token)
    assert mode == ("first-user-turn" if name == "refuses system" else "system")
    for conv in CHECK_CONVERSATIONS:
        if mode == "first-user-turn" and conv[0]["role"] == "system":
            with pytest.raises(TemplateError):  # the model's own refusal stands
                wrapped.render(conv, setup=True)
            continue
        runtime = wrapped.render(conv, setup=True)
        assert runtime == original.render(setup_messages(conv, FMT.system_prompt, mode)) + FMT.prefill
        assert runtime.endswith(FMT.prefill) and (FMT.system_prompt in runtime) == (conv[0]["role"] != "system")
        assert wrapped.render(conv) == original.render(conv)  # edgereason's own rendering is unchanged


def test_a_template_that_cannot_carry_the_setup_is_refused_by_name():
    with pytest.raises(SetupError, match="no chat template"):
        wrap_template("", FMT)
    once, _ = wrap_template(smollm2_template().source, FMT)
    with pytest.raises(SetupError, match="already carries"):
        wrap_template(once, FMT)


@pytest.fixture(scope="module")
def go_renderer(tmp_path_factory) -> Path:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("Go is missing: .ci/run installs golang-go for this test")
        pytest.skip("Go (golang-go) is not installed: it renders the Ollama TEMPLATE with text/template")
    out = tmp_path_factory.mktemp("go") / "render_template"
    env = {**os.environ, "GOCACHE": str(out.parent / "cache"), "GOFLAGS": "-mod=mod", "GO111MODULE": "on"}
    subprocess.run(["go", "build", "-o", str(out), "."], cwd=Path(__file__).parent / "go", check=True, env=env,
                   timeout=300)
    return out


@pytest.mark.parametrize("name", ["smollm2 (ChatML)", "gemma3", "refuses system"])
def test_the_ollama_template_renders_what_the_jinja_template_renders(name, go_renderer):
    """Go's own text/template (what Ollama runs) on the Modelfile's TEMPLATE gives the exact prompt the
    exported Jinja template gives: a plain question, the user's own system message, a multi-turn history."""
    original = templates()[name]
    source, mode = wrap_template(original.source, FMT, True, original.bos_token, original.eos_token)
    wrapped = ChatTemplate(source, original.bos_token, original.eos_token)
    go = go_template(turns(original, mode), FMT.prefill)
    checked = 0
    for conv in CHECK_CONVERSATIONS:
        try:
            want = wrapped.render(conv, setup=True)
        except TemplateError:
            continue
        out = subprocess.run([str(go_renderer)], input=json.dumps({"template": go, "system": FMT.system_prompt,
                                                                     "messages": conv}),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == want, (name, conv)
        checked += 1
    assert checked >= 2


def test_the_modelfile_parses_and_carries_template_system_stops_and_adapter():
    t = smollm2_template()
    source, mode = wrap_template(t.source, FMT)
    go = go_template(turns(t, mode), FMT.prefill)
    text = modelfile(ModelfileSpec("/models/base.gguf", "./adapter-lora-f16.gguf", go, FMT.system_prompt,
                                   ["<|im_end|>"], 0.0, 4096), FMT)
    parsed = parse_modelfile(text)
    assert parsed["FROM"] == ["/models/base.gguf"] and parsed["ADAPTER"] == ["./adapter-lora-f16.gguf"]
    assert parsed["TEMPLATE"] == [go] and parsed["SYSTEM"] == [FMT.system_prompt]
    assert 'stop "<|im_end|>"' in parsed["PARAMETER"] and "temperature 0" in parsed["PARAMETER"]
    with pytest.raises(ValueError, match="cannot quote"):
        modelfile(ModelfileSpec("./m.gguf", None, go, 'say """ here', [], 0.0, 4096), FMT)


def test_a_template_that_rewrites_earlier_turns_gets_no_go_template():
    """A template whose turns are not fixed text around the content (here: it upper-cases the content)
    cannot become a Go template: a clear refusal, never a template that renders something else."""
    odd = ChatTemplate("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | upper }}{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    _, mode = wrap_template(odd.source, FMT)
    with pytest.raises(SetupError, match="no Go template"):
        turns(odd, mode)


def _manifest(tmp_path: Path) -> dict:
    (tmp_path / "model-q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    return {"name": "my-reasoner", "format": "reasoning-answer",
            "source": {"base_model": "smollm2-135m", "adapter": None},
            "artifacts": {"q8_0": {"file": "model-q8_0.gguf", "kind": "gguf", "quant": "q8_0", "status": "ok",
                                   "size_bytes": 64, "verification": {"top1_agreement": 0.99, "mean_kl": 0.001}}}}


def test_the_model_card_metadata_parses_with_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    from edgereason.export.model_card import card_text, export_evals

    manifest = _manifest(tmp_path)
    run = tmp_path / "results" / "arith"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "target": str(tmp_path / "model-q8_0.gguf"), "benchmark": "arith", "n": 300, "format_compliance": 1.0,
        "strict": {"value": 0.487}, "flexible": {"value": 0.49}}))
    (tmp_path / "results" / "other").mkdir()
    (tmp_path / "results" / "other" / "summary.json").write_text(json.dumps({"target": "/elsewhere/m.gguf"}))
    evals = export_evals(tmp_path, [tmp_path / "results"])
    assert [e["benchmark"] for e in evals] == ["arith"]  # only this export's evals
    card = ModelCard(card_text(tmp_path, manifest, evals))
    data = card.data
    assert isinstance(data, ModelCardData)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.pipeline_tag == "text-generation" and "gguf" in (data.tags or [])
    flexible = [r for r in data.eval_results or [] if "flexible" in (r.metric_name or "")]
    assert flexible[0].metric_value == 0.49 and flexible[0].dataset_type == "arith"
    assert "ollama create" in card.text and "model-q8_0.gguf" in card.text
    assert "held out" not in card.text  # no accuracy check, no column
    # an export gated on accuracy: the card shows each file's held-out accuracy beside the merged model's
    manifest["accuracy_check"] = {"data": "arith-dev", "problems": ["p"] * 300, "answer_accuracy": 0.397}
    manifest["artifacts"]["q8_0"]["verification"]["accuracy"] = {"accuracy": 0.39, "reference_accuracy": 0.397}
    text = card_text(tmp_path, manifest, evals)
    assert "| arith-dev accuracy, 300 held out (merged 39.7%) |" in text and "| 0.990 | 0.0010 | – | 39.0% |" in text


def test_push_selects_the_hand_off_and_fails_offline_before_uploading(tmp_path, monkeypatch):
    from edgereason.export.push import PushError, push_export, push_files

    manifest = _manifest(tmp_path)
    for name in ("README.md", "Modelfile", "Modelfile.q8_0", "chat_template.jinja"):
        (tmp_path / name).write_text("x")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "convert.log").write_text("x")
    (tmp_path / ".staging").mkdir()
    (tmp_path / ".staging" / "model-q4_k_m.gguf").write_text("x")
    files = push_files(tmp_path, manifest)
    assert files == ["Modelfile", "Modelfile.q8_0", "README.md", "chat_template.jinja", "manifest.json",
                     "model-q8_0.gguf"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    with pytest.raises(PushError, match="offline"):
        push_export(tmp_path, "someone/my-reasoner")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    with pytest.raises(PushError, match="token"):
        push_export(tmp_path, "someone/my-reasoner")
