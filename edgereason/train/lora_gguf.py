"""A PEFT LoRA written as a llama.cpp GGUF LoRA, in memory-speed (gguf-py), every training step.

`edgereason export` converts a saved adapter with llama.cpp's own `convert_lora_to_gguf.py`; the
rollout engine cannot wait for a subprocess each step, so this writes the same file directly: the
adapter type and alpha as metadata, each module's `lora_a` ([r, in]) and `lora_b` ([out, r]) under
llama.cpp's tensor name (`blk.N.attn_q.weight.lora_a`, ...). For llama-family models the converter
permutes the rows of q_proj and k_proj (llama.cpp's RoPE layout); B carries the output rows, so B is
permuted the same way. A test checks this writer against the converter tensor by tensor.

`rollout_base_gguf` is the base such a LoRA is decoded on (GRPO's rollouts; rft's teacher when it
continues an adapter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgereason.gguf_layout import LoraLayout, lora_pairs, permute_rows
from edgereason.models import ResolvedModel


def write_lora_gguf(state: Mapping[str, object], layout: LoraLayout, alpha: float, out: Path) -> Path:
    """Write the LoRA in `state` as a GGUF LoRA at `out` (temp file, then rename)."""
    import gguf

    names = layout.tensor_names()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), layout.arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        for module, (a, b) in sorted(lora_pairs(state).items()):
            name = names.get_name(module, try_suffixes=(".weight",))
            if name is None:
                raise ValueError(f"no llama.cpp tensor for {module}")
            if heads := layout.permuted_heads(module):
                b = permute_rows(b, heads)
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def saved_lora_gguf(adapter_dir: Path, layout: LoraLayout, out: Path) -> Path:
    """A saved PEFT adapter folder (adapter_model.safetensors, its alpha from adapter_config.json)
    written as a GGUF LoRA at `out`: what a later stage's rollout engine decodes with before the
    policy's first step (a hybrid's GRPO stage starts from the SFT stage's adapter, not the base)."""
    from safetensors.torch import load_file

    out.parent.mkdir(parents=True, exist_ok=True)
    alpha = float(json.loads((adapter_dir / "adapter_config.json").read_text())["lora_alpha"])
    return write_lora_gguf(load_file(str(adapter_dir / "adapter_model.safetensors")), layout, alpha, out)


def rollout_base_gguf(model: ResolvedModel, log_dir: Path) -> Path:
    """A GGUF of the base model for llama.cpp to decode a training LoRA on: its own, or a cached F16
    conversion of its Hugging Face weights."""
    if model.gguf_path is not None:
        return model.gguf_path
    from filelock import FileLock

    from edgereason.files import atomic_output, content_key
    from edgereason.native import convert_hf_to_gguf
    from edgereason.paths import cache_dir

    hf = model.require_hf()
    # content-keyed: a model retrained in place (same names, same sizes) must not meet its old conversion
    out = cache_dir() / "gguf" / f"{model.name.replace('/', '_')}-{content_key(hf)}-f16.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():
            with atomic_output(out) as tmp:
                convert_hf_to_gguf(hf, tmp, log_dir / "convert-base.log", "f16")
    return out
