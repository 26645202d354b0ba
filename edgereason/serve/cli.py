"""`edgereason serve` and `edgereason demo`: registered through the `edgereason.commands` entry point.

The serve flags are generated from `ServeConfig` (see edgereason.cli_options)."""

from __future__ import annotations

from typing import Optional

import typer

from edgereason.cli_options import stage_command
from edgereason.console import make_console, print_error
from edgereason.serve.config import ServeConfig

console = make_console()


def run_server(cfg: ServeConfig) -> None:
    """Load the backend, then serve until interrupted (the backend, and a managed llama-server with
    it, is stopped on exit)."""
    import logging

    import uvicorn

    from edgereason.quiet import quiet_libraries
    from edgereason.serve.app import build_app

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with console.status(f"loading {cfg.model} on {cfg.backend}"):
        app = build_app(cfg)
    engine = app.state.engine
    console.print(f"serving [bold]{app.state.model_id}[/] on http://{cfg.host}:{cfg.port}/v1 "
                  f"({engine.backend.name}, {engine.backend.max_concurrency} at once, format {engine.fmt.name})")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


serve_command = stage_command(
    ServeConfig, run_server,
    help="Start the OpenAI-compatible reasoning server (reasoning_content split, majority voting, validation).",
    short={"model": "-m", "backend": "-b"}, errors=(ValueError, LookupError, RuntimeError, OSError),
)


def demo_command(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model for the in-process server (GGUF, name, HF dir)."),
    server_url: Optional[str] = typer.Option(None, help="Use a running server instead, e.g. http://127.0.0.1:8000/v1."),  # noqa: UP045
    backend: Optional[str] = typer.Option(None, help="Backend of the in-process server (default llama.cpp)."),  # noqa: UP045
    host: str = typer.Option("127.0.0.1", help="Address of the web page."),
    port: int = typer.Option(7860, help="Port of the web page."),
) -> None:
    """Open the Gradio tutoring demo: steps as hints, the final answer and a voting confidence."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        console.print("[red]error:[/] the demo needs gradio: pip install 'edgereason[demo]'")
        raise typer.Exit(2) from None
    from edgereason.serve.demo import launch

    try:
        console.print(f"tutor on http://{host}:{port}")
        launch(server_url, model, backend, host, port)
    except (ValueError, LookupError, RuntimeError) as e:
        print_error(console, e)
        raise typer.Exit(2) from None
