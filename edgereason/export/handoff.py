"""What an export folder hands to the runtimes users run models in: the chat template with the
reasoning setup (inside each merged GGUF and as `chat_template.jinja` for a base + LoRA), an Ollama
`Modelfile` beside each GGUF, and the model card (export/model_card.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereason.backends.chat_template import SETUP_VARIABLE, ChatTemplate
from edgereason.export.chat_setup import SetupError, Turns, turns, wrap_template
from edgereason.export.files import ExportError, write_text_atomic
from edgereason.export.modelfile import ModelfileSpec, go_template, modelfile
from edgereason.formats import ReasoningFormat

TEMPLATE_FILE = "chat_template.jinja"
#: serve's defaults for a request that sets none (serve/protocol.py): greedy, the whole distribution
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_CONTEXT = 0.0, 1.0, 4096


@dataclass
class ChatSetup:
    """The model's own chat template, the same with the format's setup, and its Go twin."""
    original: str
    wrapped: str
    mode: str  #: how the system text travels: "system" or "first-user-turn"
    turns: Turns | None
    go_template: str | None
    note: str  #: why there is no Go template, when there is none
    stops: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.wrapped.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"file": TEMPLATE_FILE, "sha256": self.sha256, "system_prompt": self.mode, "prefill": True,
                "variable": SETUP_VARIABLE, "ollama_template": self.go_template is not None,
                "note": self.note, "stops": self.stops}


def chat_setup_for(hf_dir: Path, fallback: str | None, fmt: ReasoningFormat) -> ChatSetup:
    """The setup for a base checkpoint's template (or `fallback`, the template edgereason supplies for
    a model whose files carry none). Raises ExportError, before anything is computed, when the template
    cannot carry it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    source = tok.chat_template if isinstance(tok.chat_template, str) else None
    source = source or fallback
    if not source:
        raise ExportError(f"{hf_dir} has no chat template, so a runtime could not build the format's prompt; "
                          "export with --no-chat-setup to write the GGUF without one")
    bos, eos = tok.bos_token or "", tok.eos_token or ""
    try:
        wrapped, mode = wrap_template(source, fmt, True, bos, eos)
    except SetupError as e:
        raise ExportError(f"the base's chat template cannot carry the reasoning setup: {e}") from e
    original = ChatTemplate(source, bos, eos)
    pieces: Turns | None = None
    go, note = None, ""
    try:
        pieces = turns(original, mode)
        go = go_template(pieces, fmt.prefill)
    except SetupError as e:
        note = f"no Ollama Modelfile: {e}"
    end = (pieces.assistant[1].strip() if pieces else "") or eos
    return ChatSetup(source, wrapped, mode, pieces, go, note, [end] if end else [])


def write_template_file(out_dir: Path, setup: ChatSetup) -> Path:
    """The wrapped template beside the GGUFs: `llama-server --jinja --chat-template-file` for a base +
    LoRA (the base GGUF keeps its own template)."""
    path = out_dir / TEMPLATE_FILE
    write_text_atomic(path, setup.wrapped)
    return path


def write_modelfiles(out_dir: Path, manifest: dict[str, Any], setup: ChatSetup, fmt: ReasoningFormat) -> list[str]:
    """`Modelfile.<artifact>` beside each verified GGUF, and `Modelfile` for the folder's pick (the
    ladder's choice, else the smallest merged GGUF). Returns the files written."""
    if setup.go_template is None:
        return []
    written: list[str] = []
    entries = {name: e for name, e in manifest.get("artifacts", {}).items()
               if e.get("status") == "ok" and e.get("kind") in ("gguf", "gguf-lora")}
    for name, e in entries.items():
        if e["kind"] == "gguf-lora":
            base = e.get("base_gguf")
            spec = ModelfileSpec(str(Path(base).resolve()) if base else "BASE.gguf", f"./{e['file']}",
                                 setup.go_template, fmt.system_prompt, setup.stops, DEFAULT_TEMPERATURE, DEFAULT_CONTEXT,
                                 DEFAULT_TOP_P)
            note = "FROM is the base GGUF the adapter was trained on, on the machine that exported it."
        else:
            spec = ModelfileSpec(f"./{e['file']}", None, setup.go_template, fmt.system_prompt, setup.stops,
                                 DEFAULT_TEMPERATURE, DEFAULT_CONTEXT, DEFAULT_TOP_P)
            note = ""
        text = modelfile(spec, fmt, note)
        write_text_atomic(out_dir / f"Modelfile.{name}", text)
        written.append(f"Modelfile.{name}")
        e["modelfile"] = f"Modelfile.{name}"
    pick = pick_artifact(manifest)
    if pick is not None and f"Modelfile.{pick}" in written:
        write_text_atomic(out_dir / "Modelfile", (out_dir / f"Modelfile.{pick}").read_text(encoding="utf-8"))
        written.insert(0, "Modelfile")
    return written


def pick_artifact(manifest: dict[str, Any]) -> str | None:
    """The artifact a user should run: the ladder's choice, else the smallest verified merged GGUF."""
    arts = manifest.get("artifacts", {})
    chosen = manifest.get("chosen")
    for name, e in arts.items():
        if chosen and e.get("file") == chosen:
            return name
    merged = [(e["size_bytes"], name) for name, e in arts.items() if e.get("status") == "ok" and e.get("kind") == "gguf"]
    return min(merged)[1] if merged else None
