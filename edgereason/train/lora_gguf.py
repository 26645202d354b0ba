"""A PEFT LoRA written as a llama.cpp GGUF LoRA, in memory-speed (gguf-py), every training step.

`edgereason export` converts a saved adapter with llama.cpp's own `convert_lora_to_gguf.py`; the
rollout engine cannot wait for a subprocess each step, so this writes the same file directly: the
adapter type and alpha as metadata, each module's `lora_a` ([r, in]) and `lora_b` ([out, r]) under
llama.cpp's tensor name (`blk.N.attn_q.weight.lora_a`, ...). For llama-family models the converter
permutes the rows of q_proj and k_proj (llama.cpp's RoPE layout); B carries the output rows, so B is
permuted the same way. A test checks this writer against the converter tensor by tensor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# HF model_type -> (GGUF architecture, whether q/k rows are permuted as in convert_hf_to_gguf's LlamaModel)
SUPPORTED: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "gemma3_text": ("gemma3", False),
}


@dataclass(frozen=True)
class LoraLayout:
    """What the writer needs to know about the base model."""

    arch: str
    permute: bool
    n_layers: int
    n_head: int
    n_kv_head: int

    @classmethod
    def from_hf_config(cls, config: Any) -> LoraLayout:
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED:
            raise ValueError(f"the llama.cpp rollout engine writes LoRAs for {', '.join(SUPPORTED)} models, not "
                             f"{model_type!r}; train with rollout_engine=transformers")
        arch, permute = SUPPORTED[model_type]
        n_head = int(config.num_attention_heads)
        return cls(arch, permute, int(config.num_hidden_layers), n_head,
                   int(getattr(config, "num_key_value_heads", None) or n_head))


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on the output rows."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def lora_pairs(state: Mapping[str, object]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF module weight name: (A, B)} from a PEFT state dict (adapter name "default" or none)."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                module = module.removeprefix("base_model.model.")
                array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
                pairs.setdefault(module + ".weight", {})[part] = array
    missing = [m for m, p in pairs.items() if len(p) != 2]
    if missing:
        raise ValueError(f"incomplete LoRA pairs for {missing[:3]}")
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}


def write_lora_gguf(state: Mapping[str, object], layout: LoraLayout, alpha: float, out: Path) -> Path:
    """Write the LoRA in `state` as a GGUF LoRA at `out` (temp file, then rename)."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == layout.arch)
    names = gguf.get_tensor_name_map(arch_enum, layout.n_layers)
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
            if layout.permute and module.endswith("q_proj.weight"):
                b = _permute(b, layout.n_head)
            elif layout.permute and module.endswith("k_proj.weight"):
                b = _permute(b, layout.n_kv_head)
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out
