"""`edgereason eval`: the command, registered through the `edgereason.commands` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def eval_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target: model name, HF dir, GGUF, model+adapter, or http://host:port/v1#model."),
    compare: list[str] = typer.Option([], "--compare", help="Another target on the same problems (repeatable)."),
    adapter: Optional[Path] = typer.Option(None, help="PEFT adapter directory."),
    backend: Optional[str] = typer.Option(None, help="transformers, llama.cpp or server (default: from the target)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="gsm8k, math500, aime24, amc23, logic, a file or hf:<name>."),
    limit: Optional[int] = typer.Option(None, help="Number of problems (default 20)."),
    seed: Optional[int] = typer.Option(None, help="Random sample with this seed."),
    samples: Optional[int] = typer.Option(None, "--samples", "-k", help="Sampled completions per problem for maj@k/pass@k."),
    sample_temperature: Optional[float] = typer.Option(None, help="Temperature of those samples (default 0.7)."),
    format: Optional[str] = typer.Option(None, "--format", help="Reasoning format preset."),
    prefill: Optional[bool] = typer.Option(None, "--prefill/--no-prefill", help="Start answers with the format's open tag."),
    constrained: Optional[bool] = typer.Option(None, "--constrained/--free", help="Grammar-constrained decoding."),
    max_tokens: Optional[int] = typer.Option(None, help="Max new tokens per answer."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy."),
    batch_size: Optional[int] = typer.Option(None, help="Prompts per generate() call."),
    concurrency: Optional[int] = typer.Option(None, help="Requests in flight against a server target."),
    fresh: Optional[bool] = typer.Option(None, "--fresh", help="Discard earlier results instead of resuming."),
    data_dir: Optional[Path] = typer.Option(None, help="Benchmark data folder."),
    out: Optional[Path] = typer.Option(None, help="Output folder."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML EvalConfig."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: key=value (repeatable)."),
) -> None:
    """Evaluate one or more targets: accuracy, maj@k, pass@k (95% CIs), format compliance, report and plots."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "set_") and v not in (None, [])}
    from edgereason.config import ConfigError
    from edgereason.evalsuite.config import EvalConfig
    from edgereason.evalsuite.report import write_report
    from edgereason.evalsuite.runner import EvalError, default_out_dir, run_eval
    from edgereason.evalsuite.targets import parse_target

    try:
        cfg = EvalConfig.load(config, set_, **flags)
        targets = [parse_target(spec, cfg.backend, cfg.adapter if i == 0 else None)
                   for i, spec in enumerate([cfg.model, *cfg.compare])]
        root = Path(cfg.out) if cfg.out else default_out_dir(cfg, targets[0])
        summaries = []
        for t in targets:
            sub = root / t.slug if len(targets) > 1 else root
            summaries.append(run_eval(cfg.model_copy(update={"out": sub}), t))
        report = write_report(summaries, root)
    except (ConfigError, EvalError, ValueError, LookupError, FileNotFoundError) as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    table = Table(title=f"{summaries[0].benchmark}: {summaries[0].n} problems")
    for col in ("target", "accuracy", "95% CI", "format", "maj@k", "pass@k", "tokens", "time"):
        table.add_column(col)
    for s in summaries:
        lo, hi = s.accuracy_ci95
        kmax = max(s.maj_at_k, key=int) if s.maj_at_k else None
        table.add_row(s.target + (" [red](partial)[/]" if s.partial else ""), f"{s.accuracy:.1%}", f"{lo:.1%}–{hi:.1%}",
                      f"{s.format_compliance:.1%}", f"maj@{kmax} {s.maj_at_k[kmax]:.1%}" if kmax else "",
                      f"pass@{kmax} {s.pass_at_k[kmax]:.1%}" if kmax else "", f"{s.mean_completion_tokens:.0f}",
                      f"{s.seconds:.0f} s" + (f" ({s.resumed} resumed)" if s.resumed else ""))
    console.print(table)
    console.print(f"report: {report}")
    failed = [s for s in summaries if s.partial]
    for s in failed:
        console.print(f"[red]{s.target} stopped early:[/] {s.error}; partial results kept in {s.out_dir} (re-run to resume)")
    if failed:
        raise typer.Exit(1)
