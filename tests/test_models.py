import os
import subprocess
import sys

import pytest

from edgereason.models import ModelNotFoundError, resolve_model


def test_default_model_generates_with_transformers(default_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    assert default_model.source == "embedded" and default_model.gguf_path.is_file()
    tok = AutoTokenizer.from_pretrained(default_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model.hf_dir)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    assert isinstance(ids, BatchEncoding)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert isinstance(out, torch.Tensor) and out.shape[1] > ids["input_ids"].shape[1]


def test_cached_copy_is_reused(default_model):
    again = resolve_model("smollm2-135m")
    assert again.hf_dir == default_model.hf_dir


def test_hf_copy_is_keyed_by_content_not_path(tmp_path, monkeypatch):
    """Two clones (two venvs) of one GGUF share one cached copy; a changed file gets its own."""
    from edgereason.files import content_key as _file_key

    monkeypatch.setenv("EDGEREASON_CACHE_DIR", str(tmp_path / "cache"))
    a, b, c = (tmp_path / n for n in ("a.gguf", "b.gguf", "c.gguf"))
    a.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    b.write_bytes(a.read_bytes())
    c.write_bytes(a.read_bytes()[:-1] + b"x")
    assert _file_key(a) == _file_key(b) != _file_key(c)
    c.write_bytes(a.read_bytes())  # rewritten in place: the remembered hash must not be reused
    os.utime(c, ns=(1, 1))
    assert _file_key(c) == _file_key(a)


def test_a_folder_retrained_in_place_gets_a_new_key(tmp_path, monkeypatch):
    """The rollout engine's GGUF of an HF folder is keyed on the weights' content: the same names and
    sizes with other values (a run retrained in place) must not reuse the old conversion."""
    from edgereason.files import content_key

    monkeypatch.setenv("EDGEREASON_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(bytes(1024))
    (model / "README.md").write_text("a")
    first = content_key(model)
    (model / "README.md").write_text("b")  # not weights: same key
    assert content_key(model) == first
    (model / "model.safetensors").write_bytes(bytes(1023) + b"\x01")  # same name, same size, new values
    assert content_key(model) != first
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        content_key(tmp_path / "cache")


def test_local_paths_resolve(default_model):
    assert resolve_model(str(default_model.hf_dir)).source == "local-hf"
    assert resolve_model(str(default_model.gguf_path)).source == "local-gguf"


@pytest.mark.model
def test_gemma_resolves_as_gguf():
    m = resolve_model("gemma3-270m")
    assert m.gguf_path is not None and m.gguf_path.stat().st_size > 100_000_000
    assert "start_of_turn" in (m.chat_template or "")


def test_unknown_and_bad_paths_are_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        resolve_model("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a Hugging Face model directory"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="embedded model"):
        resolve_model("SomeOrg/some-model-that-is-not-cached")


@pytest.mark.model
def test_concurrent_first_use_builds_one_valid_cache(tmp_path):
    """Two processes converting the default model into an empty cache at once both succeed."""
    code = (
        "from edgereason.models import resolve_model;"
        "m = resolve_model('smollm2-135m', need_hf=True); print(m.hf_dir)"
    )
    env = {**__import__("os").environ, "EDGEREASON_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    hf_dirs = list((tmp_path / "hf").iterdir())
    assert [d.name for d in hf_dirs if d.is_dir()] == [outs[0].rsplit("/", 1)[-1]]  # no leftover temp dirs
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(outs[0]).model_type == "llama"
