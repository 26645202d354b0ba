"""manifest.json: what an export folder holds, where it came from, and how each artifact verified.

`serve` reads it to learn the reasoning format a model was trained for; a re-run reads it to skip
artifacts that are already done and still match their files and sources.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereason.export.files import ExportError, sha256_dir, sha256_file, write_text_atomic
from edgereason.export.merge import read_adapter_config
from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import ResolvedModel, resolve_model
from edgereason.native import LLAMA_CPP_PYTHON_VERSION
from edgereason.versions import versions

MANIFEST = "manifest.json"
_TOOLS = ("edgereason", "llama-cpp-python", "gguf", "transformers", "peft", "torch", "bitsandbytes")


def tool_versions() -> dict[str, str | None]:
    return versions(*_TOOLS) | {"llama.cpp (vendored by llama-cpp-python)": LLAMA_CPP_PYTHON_VERSION}


@dataclass
class ExportSource:
    """The base model and optional adapter an export starts from, with their identities."""

    base: ResolvedModel
    adapter: Path | None
    format_name: str
    base_sha256: str
    adapter_sha256: str | None

    @property
    def key(self) -> str:
        return f"{self.base_sha256[:16]}+{(self.adapter_sha256 or 'none')[:16]}+{self.format_name}"

    def to_dict(self) -> dict:
        return {
            "base_model": self.base.name, "base_hf_dir": str(self.base.hf_dir), "base_sha256": self.base_sha256,
            "adapter": str(self.adapter) if self.adapter else None, "adapter_sha256": self.adapter_sha256,
            "format": self.format_name,
        }


def run_record(adapter_dir: Path) -> dict:
    """The training run's run.json for an adapter: beside it (runs/NAME/adapter) or one level up
    (runs/NAME/checkpoints/checkpoint-N, an interrupted run's last save); {} when there is none."""
    for run_json in (adapter_dir.parent / "run.json", adapter_dir.parent.parent / "run.json"):
        if run_json.is_file():
            return json.loads(run_json.read_text())
    return {}


def resolve_source(base: str | None, adapter: str | Path | None, format_name: str | None = None) -> ExportSource:
    """Resolve `--base`/`--adapter`; the base and format default to what the adapter's run recorded."""
    adapter_dir = Path(adapter).expanduser() if adapter else None
    run: dict = {}
    if adapter_dir is not None:
        read_adapter_config(adapter_dir)
        run = run_record(adapter_dir)
    base = base or run.get("config", {}).get("model")
    if not base:
        raise ExportError("say which base model to export: --base NAME (the adapter has no run.json naming it)")
    try:
        resolved = resolve_model(base, need_hf=True)
    except Exception as e:  # ModelNotFoundError or a conversion failure, both with a message
        raise ExportError(f"base model {base!r}: {e}") from e
    weights = sorted(resolved.require_hf().glob("*.safetensors"))
    if not weights:
        raise ExportError(f"{resolved.hf_dir} holds no .safetensors weights")
    _require_known_architecture(resolved.require_hf())
    return ExportSource(
        base=resolved,
        adapter=adapter_dir,
        format_name=format_name or run.get("config", {}).get("format") or DEFAULT_FORMAT,
        base_sha256=sha256_file(weights[0]) if len(weights) == 1 else sha256_dir(resolved.require_hf()),
        adapter_sha256=sha256_dir(adapter_dir) if adapter_dir else None,
    )


def _require_known_architecture(hf_dir: Path) -> None:
    """An architecture transformers cannot build fails here, before any merge or conversion."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(hf_dir))
    except (ValueError, KeyError) as e:
        raise ExportError(f"base model {hf_dir}: unknown architecture ({str(e).splitlines()[0][:200]})") from e


@dataclass
class Manifest:
    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path) -> Manifest:
        path = out_dir / MANIFEST
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("artifacts", {})
        return cls(path, data)

    def start(self, source: ExportSource, parameters: int, chat_template: str | None) -> None:
        self.data.update({
            "schema": 1,
            "name": self.path.parent.name,
            "source": source.to_dict(),
            "source_key": source.key,
            "format": source.format_name,
            "parameters": parameters,
            "chat_template": chat_template,
            "tools": tool_versions(),
        })
        self.save()

    def done(self, name: str, source_key: str) -> bool:
        """Whether artifact `name` is recorded as passed for this source and its file still matches."""
        entry = self.data["artifacts"].get(name)
        if not entry or entry.get("status") != "ok" or entry.get("source_key") != source_key:
            return False
        f = self.path.parent / entry["file"]
        if f.is_file():
            return f.stat().st_size == entry["size_bytes"] and sha256_file(f) == entry["sha256"]
        return f.is_dir() and sha256_dir(f) == entry["sha256"]

    def record(self, name: str, file: Path, kind: str, quant: str, source_key: str, status: str, **extra: Any) -> dict[str, Any]:
        size = file.stat().st_size if file.is_file() else sum(p.stat().st_size for p in file.rglob("*") if p.is_file())
        params = self.data.get("parameters") or 0
        entry = {
            "file": file.name, "kind": kind, "quant": quant, "status": status, "source_key": source_key,
            "size_bytes": size, "sha256": sha256_file(file) if file.is_file() else sha256_dir(file),
            "bits_per_weight": round(size * 8 / params, 3) if params and kind in ("gguf", "int4") else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        self.data["artifacts"][name] = entry
        self.save()
        return entry

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2, default=str) + "\n")

