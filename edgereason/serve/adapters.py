"""Named LoRA adapters on the served base: what may join it (a verified GGUF LoRA of the server's
format, exported on a base of the served base's size), checked before anything loads, at start-up
and when one is added at run time."""

from __future__ import annotations

import json
from pathlib import Path

from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import resolve_model
from edgereason.serve.config import ServeConfig


class AdapterError(ValueError):
    """A named adapter that cannot join the served base (not a GGUF LoRA, another format, another base)."""


def adapter_gguf(name: str, path: str, cfg: ServeConfig) -> Path:
    """A named adapter's GGUF LoRA: the file itself, or an export folder's adapter-lora-f16.gguf, whose
    manifest must record the server's format and a base of the served base's size."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if not manifest.is_file():
            raise AdapterError(f"adapter {name}: {p} is neither a GGUF LoRA nor an export folder")
        data = json.loads(manifest.read_text())
        lora = (data.get("artifacts") or {}).get("lora") or {}
        if lora.get("status") != "ok" or not (p / lora.get("file", "")).is_file():
            raise AdapterError(f"adapter {name}: {p} holds no verified GGUF LoRA (export with --lora)")
        fmt = cfg.format or DEFAULT_FORMAT
        if data.get("format") and data["format"] != fmt:
            raise AdapterError(f"adapter {name} was trained for the {data['format']} format; this server serves {fmt}")
        base, served = lora.get("base_gguf"), resolve_model(cfg.model).gguf_path
        if base and served and Path(base).is_file() and Path(base).stat().st_size != served.stat().st_size:
            raise AdapterError(f"adapter {name} was exported on {base}, not on the served base {served}")
        p = p / lora["file"]
    if p.suffix != ".gguf" or not p.is_file():
        raise AdapterError(f"adapter {name}: {p} is not a GGUF LoRA file (export one with `edgereason export gguf`)")
    return p


def adapter_peft(name: str, path: str) -> Path:
    """A named adapter for vLLM: a PEFT LoRA folder (a training run's `adapter/`)."""
    p = Path(path)
    config = p / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"adapter {name}: {p} is not a PEFT LoRA folder (no adapter_config.json); vLLM takes "
                           "a training run's adapter/, llama.cpp a GGUF LoRA")
    if json.loads(config.read_text()).get("peft_type") != "LORA":
        raise AdapterError(f"adapter {name}: {p} is not a LoRA adapter")
    return p


def check_adapter(name: str, path: str, cfg: ServeConfig) -> Path:
    """The adapter file the configured engine takes: a GGUF LoRA for llama.cpp, a PEFT folder for vLLM."""
    return adapter_peft(name, path) if cfg.backend_name == "vllm" else adapter_gguf(name, path, cfg)
