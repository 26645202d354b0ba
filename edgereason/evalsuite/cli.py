"""`edgereason eval`: registered through the `edgereason.commands` entry point; its flags are the
fields of `EvalConfig` (see edgereason.cli_options)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgereason.cli_options import stage_command
from edgereason.console import make_console, print_error
from edgereason.evalsuite.config import EvalConfig

if TYPE_CHECKING:
    from edgereason.results import EvalSummary

console = make_console()


def _grader_bench() -> None:
    from edgereason.evalsuite.grader_bench import CASES, rules_text, run_grader_bench

    cases = run_grader_bench()
    table = Table(title=f"The grader on {len(cases)} hand-labelled completions ({CASES.name})")
    for col in ("case", "type", "strict answer", "strict", "flexible answer", "flexible", "as labelled"):
        table.add_column(col, overflow="fold")
    for c in cases:
        mark = "[green]yes[/]" if c["agrees"] else "[red]NO[/]"
        table.add_row(c["note"], c["kind"], repr(c["strict_answer"]), str(c["strict_got"]), repr(c["flexible_answer"]),
                      str(c["flexible_got"]), mark)
    console.print(table)
    console.print("Flexible rules:\n" + rules_text())
    if not all(c["agrees"] for c in cases):
        raise typer.Exit(1)


def run(cfg: EvalConfig) -> None:
    if cfg.grader_bench:
        _grader_bench()
        return
    from edgereason.evalsuite.report import write_report, write_transfer_report
    from edgereason.evalsuite.runner import default_out_dir, run_eval
    from edgereason.paths import slug
    from edgereason.quiet import quiet_libraries
    from edgereason.targets import check_target, parse_target

    quiet_libraries()
    targets = [parse_target(spec, cfg.backend, cfg.adapter if i == 0 else None)
               for i, spec in enumerate([cfg.model, *cfg.compare])]
    for t in targets:  # every target before the first is evaluated: a typo in the last costs no compute
        check_target(t)
    if len({t.slug for t in targets}) < len(targets):
        raise ValueError("the same target is given twice (--model and --compare name distinct models)")
    benches = cfg.benchmarks
    first = cfg.model_copy(update={"benchmark": [benches[0]], "transfer": False})
    root = Path(cfg.out) if cfg.out else (Path("results") / "transfer" if len(benches) > 1 else default_out_dir(first, targets[0]))
    by_benchmark = {}
    reports = []
    for bench in benches:
        one = cfg.model_copy(update={"benchmark": [bench], "transfer": False})
        # A folder per benchmark named by its slug, never the raw name: an absolute data path joined
        # onto `root` would replace it and put results inside the user's data file.
        bench_root = root / slug(bench) if len(benches) > 1 else root
        summaries = []
        for t in targets:
            sub = bench_root / t.slug if len(targets) > 1 else bench_root
            summaries.append(run_eval(one.model_copy(update={"out": sub}), t))
        reports.append(write_report(summaries, bench_root))
        by_benchmark[bench] = summaries
    if len(benches) > 1:
        reports.append(write_transfer_report(by_benchmark, root))
    for bench, summaries in by_benchmark.items():
        console.print(summary_table(bench, summaries))
    for r in reports:
        console.print(f"report: {r}")
    failed = [s for ss in by_benchmark.values() for s in ss if s.partial]
    for s in failed:
        print_error(console, f"{s.error}; partial results kept in {s.out_dir} (re-run to resume)",
                    label=f"{s.target} stopped early:")
    if failed:
        raise typer.Exit(1)


def summary_table(bench: str, summaries: list[EvalSummary]) -> Table:
    """One benchmark's targets side by side for the console.

    Columns no target has (maj@k, verified@k without samples) are left out and headers kept short: a
    log is narrow (120 columns in a pipeline's, 80 in a bare pipe), and nine columns there folded the
    target names a few letters a line."""
    from edgereason.evalsuite.report import short_name

    def row(s: EvalSummary) -> dict[str, str]:
        lo, hi = s.flexible.ci95
        kmax = max(s.maj_at_k.get("flexible", {}), key=int, default=None)
        warn = " [yellow]⚠ ≤ baseline[/]" if s.at_or_below_baseline["flexible"] else ""
        return {"target": short_name(s.target) + (" [red](partial)[/]" if s.partial else "") + warn,
                "strict": f"{s.strict.value:.1%}", "flexible": f"{s.flexible.value:.1%}",
                "95% CI": f"{lo:.1%}–{hi:.1%}",
                "format": f"{s.format_compliance:.1%}" + (f" ({s.answers_forced} forced)" if s.answers_forced else ""),
                "maj@k": f"maj@{kmax} {s.maj_at_k['flexible'][kmax]:.1%}" if kmax else "",
                "verified@k": f"{s.checked_at_k['verified']['flexible'][kmax]:.1%}" if kmax and s.checked_at_k else "",
                "tokens": f"{s.mean_completion_tokens:.0f}",
                "time": f"{s.seconds:.0f} s" + (f" ({s.resumed} resumed)" if s.resumed else "")}

    rows = [row(s) for s in summaries]
    s0 = summaries[0]
    table = Table(title=f"{bench}: {s0.n} problems (baseline {s0.baseline.rate:.1%}; 95% CI of flexible)")
    columns = [c for c in rows[0] if any(r[c] for r in rows)]
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    return table


def _errors() -> tuple[type[Exception], ...]:
    from edgereason.evalsuite.runner import EvalError

    return (EvalError, ValueError, LookupError, FileNotFoundError)


eval_command = stage_command(
    EvalConfig, run, short={"model": "-m", "benchmark": "-b", "samples": "-k"}, errors=_errors(),
    help="Evaluate one or more targets: strict and flexible accuracy with the baseline, maj@k, pass@k (95% CIs), "
    "format compliance, paired tests, report and plots; --transfer across benchmarks; --grader-bench checks the grader.",
)
