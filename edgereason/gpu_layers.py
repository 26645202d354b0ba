"""How many layers llama.cpp puts on a GPU (`--gpu-layers`: auto, all or a number), for llama-server
and llama-cpp-python alike, and what the build in use can do about it.

The set-up builds llama.cpp for the CPU; a device with a GPU gets it by building with the backend's
CMake flag (docs/edge-gpu.md: CUDA on Jetson, Metal on Apple silicon, Vulkan on laptop iGPUs). A
request for layers on a build without a GPU backend runs on the CPU and says so, never silently.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

REBUILD_HINT = ("rebuild llama.cpp with its GPU backend: CMAKE_ARGS='-DGGML_CUDA=on' (Jetson, NVIDIA), "
                "'-DGGML_METAL=on' (Apple silicon) or '-DGGML_VULKAN=on' (iGPUs), then `make setup` (docs/edge-gpu.md)")


def parse_gpu_layers(value: str | int | None) -> str:
    """'auto', 'all' or a whole number of layers, as llama-server's --gpu-layers takes it."""
    text = "auto" if value is None else str(value).strip().lower()
    if text in ("auto", "all") or (text.isdigit()):
        return text
    raise ValueError(f"gpu_layers {value!r}: use auto, all or a number of layers (0 = CPU only)")


#: A config field's type: checked and normalised as the config loads.
GpuLayers = Annotated[str, BeforeValidator(lambda v: parse_gpu_layers(v))]


def n_gpu_layers(value: str | int | None) -> int:
    """llama-cpp-python's n_gpu_layers: -1 for every layer. `auto` offloads all when the build can."""
    text = parse_gpu_layers(value)
    if text == "all" or (text == "auto" and gpu_offload_supported()):
        return -1
    return 0 if text == "auto" else int(text)


@functools.cache
def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend (the set-up's CPU build has none)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except (ImportError, OSError, AttributeError):
        return False


def offload_report(value: str | int | None) -> dict[str, Any]:
    """What /health, doctor and the bench say about offload."""
    text = parse_gpu_layers(value)
    supported = gpu_offload_supported()
    asked = text not in ("auto", "0")
    note = ("layers offloaded as requested" if supported and text != "0" else
            "CPU only (--gpu-layers 0)" if text == "0" else
            f"--gpu-layers {text} requested, but this llama.cpp build has no GPU backend: every layer runs on the "
            f"CPU; {REBUILD_HINT}" if asked else "this llama.cpp build has no GPU backend: CPU only")
    return {"requested": text, "build_supports_gpu": supported, "on_gpu": supported and text != "0", "note": note}


def warn_if_unsupported(value: str | int | None, log: Any) -> None:
    report = offload_report(value)
    if report["requested"] not in ("auto", "0") and not report["build_supports_gpu"]:
        log(report["note"])


#: What llama.cpp keeps on the GPU beside weights and KV cache (compute buffers, scratch), reserved
#: when choosing how many layers fit; a round figure, as Ollama reserves one.
GPU_COMPUTE_RESERVE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class OffloadPlan:
    """Where a GGUF's weights and KV cache sit with `layers` of its `total_layers` on the GPU."""

    requested: str
    layers: int
    total_layers: int
    gpu_bytes: int  #: offloaded layers' weights and KV cache (+ the output head when every layer is)
    cpu_bytes: int  #: the rest: the other layers, the token embeddings, their KV cache

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "layers_on_gpu": self.layers, "total_layers": self.total_layers,
                "gpu_mb": round(self.gpu_bytes / 2**20, 1), "cpu_mb": round(self.cpu_bytes / 2**20, 1)}


def layer_weight_bytes(path: str | Path) -> tuple[list[int], int, int]:
    """(bytes of each repeating layer blk.N, the output head, everything else) of a GGUF's tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    per: dict[int, int] = {}
    head = other = 0
    for t in reader.tensors:
        size = int(t.n_bytes)
        if t.name.startswith("blk."):
            n = int(t.name.split(".")[1])
            per[n] = per.get(n, 0) + size
        elif t.name.startswith("output"):  # output.weight and output_norm: offloaded with the last layer
            head += size
        else:
            other += size
    return [per[i] for i in sorted(per)], head, other


def plan_offload(path: str | Path, gpu_layers: str | int | None, n_ctx: int, kv_bytes_per_token: int,
                 gpu_budget_bytes: int | None) -> OffloadPlan:
    """How llama.cpp would split the model: `all` or N layers as asked (N capped at the model's), or for
    `auto` the most layers whose weights, KV cache and a compute reserve fit `gpu_budget_bytes` (none
    without a GPU). llama.cpp offloads the last layers first; the output head goes once all have."""
    per, head, other = layer_weight_bytes(path)
    n = len(per)
    kv_layer = kv_bytes_per_token * n_ctx // max(1, n)
    text = parse_gpu_layers(gpu_layers)
    if text == "all":
        k = n
    elif text == "auto":
        k = 0
        if gpu_budget_bytes is not None:
            room = gpu_budget_bytes - GPU_COMPUTE_RESERVE_BYTES
            while k < n and sum(per[n - k - 1:]) + (k + 1) * kv_layer + (head if k + 1 == n else 0) <= room:
                k += 1
    else:
        k = min(int(text), n)
    on_gpu = sum(per[n - k:]) if k else 0
    gpu = on_gpu + k * kv_layer + (head if k == n and n else 0)
    cpu = sum(per) - on_gpu + (n - k) * kv_layer + other + (0 if k == n and n else head)
    return OffloadPlan(text, k, n, gpu, cpu)
