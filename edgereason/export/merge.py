"""Merge a LoRA adapter into its base model and save a plain HF checkpoint (with tokenizer and
chat template), the input of every other export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgereason.export.files import ExportError, atomic_output
from edgereason.models import ResolvedModel


def read_adapter_config(adapter_dir: Path) -> dict:
    cfg = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise ExportError(f"adapter folder {adapter_dir} does not exist")
    if not cfg.is_file():
        raise ExportError(f"{adapter_dir} is not a PEFT adapter: it has no adapter_config.json")
    if not any(adapter_dir.glob("adapter_model.*")):
        raise ExportError(f"{adapter_dir} has adapter_config.json but no adapter_model.safetensors/.bin weights")
    return json.loads(cfg.read_text())


def load_hf(base: ResolvedModel, adapter_dir: Path | None = None, merge: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 on CPU; with an adapter, merged unless `merge` is False."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = base.require_hf()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    if base.chat_template and not tok.chat_template:
        tok.chat_template = base.chat_template
    model: Any = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        read_adapter_config(adapter_dir)
        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except (RuntimeError, ValueError, KeyError) as e:
            # A size mismatch here means the adapter was trained on another base model.
            raise ExportError(
                f"adapter {adapter_dir} does not fit base model {base.name}: {str(e).splitlines()[0][:300]}"
            ) from None
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model, tok


def merge_adapter(base: ResolvedModel, adapter_dir: Path, out: Path) -> Path:
    """Write base+adapter merged to `out` (safetensors, tokenizer, chat template), atomically."""
    model, tok = load_hf(base, adapter_dir)
    with atomic_output(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def parameter_count(hf_dir: Path) -> int:
    """Parameters stored in a safetensors checkpoint, read from the headers only."""
    from safetensors import safe_open

    total = 0
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for name in st.keys():
                n = 1
                for d in st.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def merged_checkpoint(src: Any, manifest: Any, force: bool, console: Any) -> tuple[Path, bool]:
    """The HF checkpoint every export starts from: the base's own with no adapter, else
    `<out>/merged-hf` (merged now unless the manifest records it for these sources). Returns the
    folder and whether it was merged now."""
    import time

    if src.adapter is None:
        return src.base.require_hf(), False
    hf_dir = manifest.path.parent / "merged-hf"
    if not force and manifest.done("merged-hf", src.key):
        return hf_dir, False
    console.print(f"[bold]merge[/] {src.adapter} into {src.base.name}")
    t0 = time.perf_counter()
    merge_adapter(src.base, src.adapter, hf_dir)
    manifest.record("merged-hf", hf_dir, "hf", "f32", src.key, "ok", wall_s=round(time.perf_counter() - t0, 2))
    return hf_dir, True
