"""How a Hugging Face model's tensors sit in llama.cpp's GGUF layout, and a PEFT LoRA's A/B pairs.

Shared by the training rollout engine (a LoRA written as a GGUF LoRA every step) and the OpenVINO
export (a base GGUF's quantized blocks carried into the IR under their HF names). For llama-family
models llama.cpp's converter permutes the output rows of q_proj and k_proj (its RoPE layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    """How a base model's tensors sit in llama.cpp's GGUF layout."""

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

    def permuted_heads(self, weight_name: str) -> int | None:
        """The head count by which llama.cpp's converter permuted this weight's rows, or None."""
        if self.permute and weight_name.endswith("q_proj.weight"):
            return self.n_head
        if self.permute and weight_name.endswith("k_proj.weight"):
            return self.n_kv_head
        return None

    def tensor_names(self) -> Any:
        """gguf-py's map from HF tensor names to this architecture's GGUF names."""
        import gguf

        arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == self.arch)
        return gguf.get_tensor_name_map(arch_enum, self.n_layers)


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on the output rows."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def lora_pairs(state: Mapping[str, object]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{HF module weight name: (A, B)} from a PEFT state dict: the adapter named "default" (a live
    model's) or the unnamed one (a saved file's). Other adapters are left out: TRL's GRPO adds a
    frozen copy named "ref" beside a continued adapter when β > 0, and its tensors, read as the same
    module's, would overwrite the trained ones."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                if key.split(marker)[1] not in ("weight", "default.weight"):
                    continue  # another adapter's tensor (e.g. lora_A.ref.weight)
                module = key.split(marker)[0]
                module = module.removeprefix("base_model.model.")
                array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
                pairs.setdefault(module + ".weight", {})[part] = array
    missing = [m for m, p in pairs.items() if len(p) != 2]
    if missing:
        raise ValueError(f"incomplete LoRA pairs for {missing[:3]}")
    return {m: (p["lora_A"], p["lora_B"]) for m, p in pairs.items()}
