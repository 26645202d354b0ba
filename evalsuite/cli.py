"""`edgereason eval`: the command, registered through the `edgereason.commands` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def eval_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name, HF dir or GGUF."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT adapter directory."),
    backend: Optional[str] = typer.Option(None, help="transformers or llama.cpp."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="gsm8k, math500, aime24, amc23 or a file."),
    limit: Optional[int] = typer.Option(None, help="Number of problems (default 20)."),
    seed: Optional[int] = typer.Option(None, help="Random sample with this seed."),
    format: Optional[str] = typer.Option(None, "--format", help="Reasoning format preset."),
    prefill: Optional[bool] = typer.Option(None, "--prefill/--no-prefill", help="Start answers with the format's open tag."),
    max_tokens: Optional[int] = typer.Option(None, help="Max new tokens per answer."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per generate() call."),
    data_dir: Optional[Path] = typer.Option(None, help="Benchmark data folder."),
    out: Optional[Path] = typer.Option(None, help="Output folder."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML EvalConfig."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: key=value (repeatable)."),
) -> None:
    """Evaluate a model: accuracy (with 95% CI) and format compliance on a benchmark."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "set_")}  # explicit flags win
    from edgereason.config import ConfigError
    from evalsuite.config import EvalConfig
    from evalsuite.runner import run_eval

    try:
        cfg = EvalConfig.load(config, set_, **flags)
        summary = run_eval(cfg)
    except (ConfigError, ValueError, LookupError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    table = Table(title=f"{summary.model} on {summary.benchmark} ({summary.n} problems, {summary.backend})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    lo, hi = summary.accuracy_ci95
    table.add_row("accuracy", f"{summary.accuracy:.1%}", f"{lo:.1%} – {hi:.1%}")
    lo, hi = summary.format_ci95
    table.add_row("format compliance", f"{summary.format_compliance:.1%}", f"{lo:.1%} – {hi:.1%}")
    table.add_row("mean completion tokens", f"{summary.mean_completion_tokens:.0f}", "")
    table.add_row("wall time", f"{summary.seconds:.0f} s", "")
    console.print(table)
    console.print(f"samples and summary in {summary.out_dir}/")
