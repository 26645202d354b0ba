"""`edgereason bench`: registered through the `edgereason.commands` entry point; its flags are the
fields of `BenchConfig` (see edgereason.cli_options)."""

from __future__ import annotations

from pathlib import Path

import typer

from edgereason.cli_options import stage_command
from edgereason.console import make_console
from edgereason.evalsuite.bench import BenchConfig

console = make_console()


def run(cfg: BenchConfig) -> None:
    from rich.markdown import Markdown

    from edgereason.evalsuite.bench import default_bench_dir, run_bench, write_bench

    with console.status("bench") as status:
        results = run_bench(cfg, progress=lambda msg: status.update(f"bench: {msg}"))
    report = write_bench(results, Path(cfg.out) if cfg.out else default_bench_dir())
    console.print(Markdown("\n".join(line for line in report.read_text().splitlines() if not line.startswith("!["))))
    console.print(f"report: {report}")
    if any("error" in r for a in results["artifacts"] for r in a["runs"]):
        raise typer.Exit(1)


def _errors() -> tuple[type[Exception], ...]:
    from edgereason.models import ModelNotFoundError

    return (ModelNotFoundError, ValueError, FileNotFoundError, RuntimeError)


bench_command = stage_command(
    BenchConfig, run, short={"models": "-m", "threads": "-t"}, errors=_errors(),
    help="Speed and memory on this device: load, TTFT, pp/tg tokens/s, latency, RSS, device-profile fit; --serve "
    "benchmarks the server against raw llama-server.",
)
