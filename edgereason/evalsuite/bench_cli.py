"""`edgereason bench`: registered through the `edgereason.commands` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def bench_command(
    model: list[str] = typer.Option([], "--model", "-m", help="GGUF file or model name (repeatable; default the embedded model)."),
    threads: list[int] = typer.Option([], "--threads", "-t", help="Thread count (repeatable; default 1 and all cores)."),
    device_profile: Optional[str] = typer.Option(None, help="edge-4gb, edge-8gb or cloud-gpu: check the memory fit."),
    n_ctx: Optional[int] = typer.Option(None, help="Context length to load with (default 2048)."),
    repeats: Optional[int] = typer.Option(None, help="Measured repetitions (default 3)."),
    pp: Optional[int] = typer.Option(None, help="Prompt tokens (default 512)."),
    tg: Optional[int] = typer.Option(None, help="Generated tokens (default 128)."),
    problems: Optional[int] = typer.Option(None, help="GSM8K problems answered end to end (default 3)."),
    serve: Optional[bool] = typer.Option(None, "--serve", help="Also benchmark the HTTP server (overhead, 64-client load)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default results/bench-<time>)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML BenchConfig."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: key=value."),
) -> None:
    """Speed and memory on this device: load, TTFT, pp/tg tokens/s, latency, RSS, device-profile fit."""
    from edgereason.config import ConfigError
    from edgereason.models import ModelNotFoundError
    from edgereason.evalsuite.bench import BenchConfig, default_bench_dir, run_bench, write_bench

    flags = {"models": model or None, "threads": threads or None, "device_profile": device_profile, "n_ctx": n_ctx,
             "repeats": repeats, "pp": pp, "tg": tg, "problems": problems, "out": out, "serve": serve}
    try:
        cfg = BenchConfig.load(config, set_, **{k: v for k, v in flags.items() if v is not None})
        with console.status("bench") as status:
            results = run_bench(cfg, progress=lambda msg: status.update(f"bench: {msg}"))
        report = write_bench(results, Path(cfg.out) if cfg.out else default_bench_dir())
    except (ConfigError, ModelNotFoundError, ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    from rich.markdown import Markdown

    console.print(Markdown("\n".join(l for l in report.read_text().splitlines() if not l.startswith("!["))))
    console.print(f"report: {report}")
    if any("error" in r for a in results["artifacts"] for r in a["runs"]):
        raise typer.Exit(1)
