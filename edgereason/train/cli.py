"""`edgereason train`: registered through the `edgereason.commands` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML TrainConfig."),
    name: Optional[str] = typer.Option(None, help="Run name (outputs in runs/<name>)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model."),
    dataset: Optional[str] = typer.Option(None, help="Training data (default gsm8k-train)."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    max_samples: Optional[int] = typer.Option(None, help="Use at most this many problems."),
    format: Optional[str] = typer.Option(None, "--format", help="Reasoning format preset."),
    output_root: Optional[Path] = typer.Option(None, help="Folder for runs (default runs/)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run of the same name."),
    set_: list[str] = typer.Option([], "--set", help="Override any TrainConfig field: key=value (repeatable)."),
) -> None:
    """GRPO with LoRA: writes runs/<name>/adapter, run.json, metrics, plot and report.

    Re-running the same command after an interruption resumes from the last checkpoint."""
    from edgereason.config import ConfigError
    from edgereason.train.config import TrainConfig
    from edgereason.train.grpo import TrainSetupError, run_training

    try:
        cfg = TrainConfig.load(
            config, set_, name=name, model=model, dataset=dataset, max_steps=max_steps,
            max_samples=max_samples, format=format, output_root=output_root, overwrite=overwrite or None,
        )
        result = run_training(cfg)
    except (ConfigError, TrainSetupError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    console.print(f"[green]done[/] {result.steps} steps ({result.stop_reason}) in {result.seconds:.0f} s")
    for k, v in result.metrics.items():
        console.print(f"  {k}: {v}")
    console.print(f"adapter: {result.adapter_dir}\nreport:  {result.run_dir / 'report.md'}")
