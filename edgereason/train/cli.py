"""`edgereason train`: registered through the `edgereason.commands` entry point; its flags are the
fields of `TrainConfig` (see edgereason.cli_options)."""

from __future__ import annotations

from edgereason.cli_options import stage_command
from edgereason.console import make_console
from edgereason.train.config import TrainConfig

console = make_console()


def run(cfg: TrainConfig) -> None:
    from edgereason.quiet import quiet_libraries
    quiet_libraries()
    from edgereason.train.methods import run_method
    from edgereason.train.runs import is_main_process

    result = run_method(cfg)
    if not is_main_process():  # one summary for a distributed run
        return
    console.print(f"[green]done[/] {result.steps} steps ({result.stop_reason}) in {result.seconds:.0f} s")
    for k, v in result.metrics.items():
        console.print(f"  {k}: {v}")
    console.print(f"adapter: {result.adapter_dir}\nreport:  {result.run_dir / 'report.md'}")


def _errors() -> tuple[type[Exception], ...]:
    from edgereason.train.runs import TrainSetupError

    return (TrainSetupError,)


train_command = stage_command(
    TrainConfig, run, short={"model": "-m", "name": "-n"}, errors=_errors(),
    help="GRPO (or --method sft: supervised on checked rationales) with LoRA: writes runs/<name>/adapter, run.json, "
    "metrics, plots and report. Re-running the same command after an interruption resumes from the last checkpoint.",
)
