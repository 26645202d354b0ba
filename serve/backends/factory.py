"""Build a backend by kind; the one place that maps a name to an engine."""

from __future__ import annotations

from pathlib import Path

from serve.backends.base import Backend

BACKENDS = ("transformers", "llama.cpp", "vllm", "upstream")


def create_backend(
    kind: str,
    model: str,
    adapter: str | Path | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    n_ctx: int = 2048,
    **options,
) -> Backend:
    """A loaded backend of `kind` for `model` (+ `adapter`: a PEFT dir, or a GGUF LoRA for llama.cpp)."""
    if kind == "transformers":
        from serve.backends.transformers_backend import TransformersBackend

        return TransformersBackend(model, adapter=adapter, batch_size=batch_size, threads=threads)
    if kind == "llama.cpp":
        from serve.backends.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend(model, n_ctx=n_ctx, threads=threads, lora_path=adapter)
    if kind == "vllm":
        from serve.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model, adapter=adapter, n_ctx=max(n_ctx, 4096),
                           tensor_parallel_size=options.get("tensor_parallel_size", 1))
    if kind == "upstream":
        from serve.backends.upstream_backend import UpstreamBackend

        return UpstreamBackend(options.get("upstream") or [], model, options.get("upstream_model"),
                               options.get("upstream_policy", "least_busy"), options.get("upstream_api_key"))
    raise ValueError(f"unknown backend {kind!r}; choose one of: {', '.join(BACKENDS)}")
