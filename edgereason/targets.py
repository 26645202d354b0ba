"""What a command runs on: a model by name, a GGUF, a base+adapter pair, or a server URL (eval's targets, and
distillation's teacher).

Target strings (for `--model` and `--compare`):
  smollm2-135m                      an embedded/local/hub model on the transformers backend
  smollm2-135m+runs/x/adapter       the same with a PEFT LoRA adapter
  exports/x/model-q4_k_m.gguf       a GGUF on llama.cpp in process (`concurrency` prompts decoded together)
  base.gguf+adapter-lora-f16.gguf   a GGUF with a GGUF LoRA on top
  exports/x                         an export folder: its chosen GGUF (or base GGUF + LoRA)
  exports/x/openvino-int4           an OpenVINO IR folder (`export openvino`) on openvino-genai
  http://127.0.0.1:8000/v1#name     an OpenAI-compatible server (model `name`; default: its first)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgereason.backends import Backend, create_backend
from edgereason.formats import ReasoningFormat
from edgereason.models import resolve_model
from edgereason.paths import slug

LABEL_WIDTH = 48


@dataclass(frozen=True)
class Target:
    spec: str
    backend: str  # transformers | llama.cpp (llama-server) | openvino | server
    model: str
    adapter: Path | None = None
    url: str | None = None

    @property
    def slug(self) -> str:
        """The target's results folder name. A long spec keeps its first 71 characters and a hash of the
        whole: a base GGUF and that GGUF + a LoRA share a long prefix."""
        return slug(self.spec)

    @property
    def label(self) -> str:
        """A short name for a progress line: each part's last two path components, at most
        `LABEL_WIDTH` characters. The whole spec (an embedded model's absolute path) pushed the running
        figures off a 120-column line."""
        if self.backend == "server":
            text = self.spec
        else:
            parts = [self.model] + ([str(self.adapter)] if self.adapter is not None else [])
            text = "+".join("/".join(Path(p).parts[-2:]) for p in parts)
        return text if len(text) <= LABEL_WIDTH else "…" + text[-(LABEL_WIDTH - 1):]


def parse_target(spec: str, backend: str | None = None, adapter: Path | None = None) -> Target:
    """Read a target string; `backend` forces the engine for a model path/name."""
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return Target(spec, "server", model, url=url.rstrip("/"))
    # A file or folder whose name holds a "+" is that path, not model+adapter.
    model, plus, extra = (spec, "", "") if Path(spec).exists() else spec.partition("+")
    if plus:
        adapter = Path(extra)
    if backend in (None, "server"):
        is_export = Path(model).is_dir() and (Path(model) / "manifest.json").is_file()
        if (Path(model) / "openvino_model.xml").is_file():
            backend = "openvino"
        else:
            backend = "llama.cpp" if model.endswith(".gguf") or is_export else "transformers"
    return Target(spec, backend, model, adapter)


def check_target(target: Target) -> None:
    """Raise before any compute when a target cannot be opened: an unknown model, a missing file or
    adapter. (A server is checked when it is opened: it may still be starting.)"""
    if target.backend == "server":
        return
    if target.adapter is not None and not target.adapter.exists():
        raise FileNotFoundError(f"{target.spec}: adapter {target.adapter} not found")
    if target.backend == "openvino":
        return  # parse_target chose it because the IR is there
    resolve_model(target.model)


def open_target(target: Target, fmt: ReasoningFormat, *, batch_size: int = 8, threads: int | None = None,
                concurrency: int = 4, n_ctx: int = 2048, gpu_layers: str = "auto") -> Backend:
    """A loaded generator for `target`: llama.cpp in process for a GGUF, transformers for an HF
    model (+ adapter), or an OpenAI-compatible server (checked to answer and serve the model)."""
    if target.backend == "server":
        client = create_backend("openai", target.url, target.model, concurrency=concurrency, reasoning_format=fmt)
        return client.connect()  # type: ignore[attr-defined]
    if target.backend == "openvino":
        return create_backend("openvino", target.model, threads=threads)
    if target.backend == "llama.cpp":
        # In process, not llama-server: a 135M model's greedy tokens change with which sequences share
        # a decode (batch-dependent float rounding), and llama-server's continuous batching makes that
        # depend on timing. The in-process decoder admits the next problem when a row finishes, which
        # depends on the tokens only: the same command gives the same answers.
        return create_backend("llama-cpp-python", target.model, n_ctx=n_ctx, threads=threads, lora_path=target.adapter,
                              gpu_layers=gpu_layers, parallel_prompts=concurrency)
    return create_backend("transformers", target.model, adapter=target.adapter, batch_size=batch_size, threads=threads)
