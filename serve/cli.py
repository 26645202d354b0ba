"""`edgereason serve`: registered through the `edgereason.commands` entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def build_app(cfg):
    """Load the backend and wrap it in the HTTP app (used by the CLI and the tests)."""
    from edgereason.formats import get_format
    from serve.app import create_app
    from serve.backends.factory import create_backend
    from serve.engine import EngineLimits, ReasoningEngine

    backend = create_backend(
        cfg.backend, cfg.model, adapter=cfg.adapter, threads=cfg.threads, n_ctx=cfg.n_ctx, upstream=cfg.upstream,
        upstream_model=cfg.upstream_model, upstream_policy=cfg.upstream_policy,
        tensor_parallel_size=cfg.tensor_parallel_size,
    )
    limits = EngineLimits(
        max_tokens=cfg.max_tokens, max_n=cfg.max_n, max_k=cfg.max_k, max_queue=cfg.max_queue,
        format_retries=cfg.format_retries, timeout_s=cfg.timeout_s,
    )
    engine = ReasoningEngine(backend, get_format(cfg.format or backend.format), limits)
    return create_app(engine, cfg.served_name or backend.model_name, cfg.api_key or os.environ.get("EDGEREASON_API_KEY"))


def serve_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="GGUF file, embedded name or HF dir."),
    backend: Optional[str] = typer.Option(None, help="llama.cpp (default), vllm, transformers or upstream."),
    upstream: list[str] = typer.Option([], "--upstream", help="Upstream replica URL for --backend upstream (repeatable)."),
    adapter: Optional[str] = typer.Option(None, help="LoRA adapter."),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    api_key: Optional[str] = typer.Option(None, help="Require this bearer key."),
    format: Optional[str] = typer.Option(None, "--format", help="Reasoning format preset."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML ServeConfig."),
    set_: list[str] = typer.Option([], "--set", help="Override a ServeConfig field: key=value."),
) -> None:
    """Start the OpenAI-compatible reasoning server (reasoning_content split, majority voting)."""
    import uvicorn

    from edgereason.config import ConfigError
    from serve.config import ServeConfig

    try:
        cfg = ServeConfig.load(config, set_, model=model, backend=backend, adapter=adapter, host=host, port=port,
                               api_key=api_key, format=format, upstream=upstream or None)
        app = build_app(cfg)
    except (ConfigError, ValueError, LookupError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"serving on http://{cfg.host}:{cfg.port}/v1 ({cfg.backend})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def demo_command(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model for the in-process server (GGUF, name, HF dir)."),
    server_url: Optional[str] = typer.Option(None, help="Use a running server instead, e.g. http://127.0.0.1:8000/v1."),
    backend: Optional[str] = typer.Option(None, help="Backend of the in-process server (default llama.cpp)."),
    host: str = typer.Option("127.0.0.1", help="Address of the web page."),
    port: int = typer.Option(7860, help="Port of the web page."),
) -> None:
    """Open the Gradio tutoring demo: steps as hints, the final answer and a voting confidence."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        console.print("[red]error:[/] the demo needs gradio: pip install 'edgereason[demo]'")
        raise typer.Exit(2) from None
    from serve.demo import launch

    try:
        console.print(f"tutor on http://{host}:{port}")
        launch(server_url, model, backend, host, port)
    except (ValueError, LookupError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
