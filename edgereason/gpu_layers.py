"""How many layers llama.cpp puts on a GPU (`--gpu-layers`: auto, all or a number), for llama-server
and llama-cpp-python alike, and what the build in use can do about it.

The set-up builds llama.cpp for the CPU; a device with a GPU gets it by building with the backend's
CMake flag (docs/edge-gpu.md: CUDA on Jetson, Metal on Apple silicon, Vulkan on laptop iGPUs). A
request for layers on a build without a GPU backend runs on the CPU and says so, never silently.
"""

from __future__ import annotations

import functools
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
