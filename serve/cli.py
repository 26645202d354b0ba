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

    backend = create_backend(cfg.backend, cfg.model, adapter=cfg.adapter, threads=cfg.threads, n_ctx=cfg.n_ctx)
    limits = EngineLimits(
        max_tokens=cfg.max_tokens, max_n=cfg.max_n, max_k=cfg.max_k, max_queue=cfg.max_queue,
        format_retries=cfg.format_retries, timeout_s=cfg.timeout_s,
    )
    engine = ReasoningEngine(backend, get_format(cfg.format or backend.format), limits)
    return create_app(engine, cfg.served_name or backend.model_name, cfg.api_key or os.environ.get("EDGEREASON_API_KEY"))


def serve_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="GGUF file, embedded name or HF dir."),
    backend: Optional[str] = typer.Option(None, help="llama.cpp (default) or transformers."),
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
                               api_key=api_key, format=format)
        app = build_app(cfg)
    except (ConfigError, ValueError, LookupError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"serving on http://{cfg.host}:{cfg.port}/v1 ({cfg.backend})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
