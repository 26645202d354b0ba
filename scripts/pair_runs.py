"""Compare eval runs of one target made with different settings (e.g. without and with
`--force-answer`), paired by problem, as `eval --compare` compares targets: report.md, plots and a
comparison.json that `docs_tables.py` renders (exact McNemar against the first run).

Each run is named by its folder: its summary's target gets ` [NAME]` appended, so the runs stay
apart in the tables (`labels` in a results-table marker maps `model.gguf [NAME]` to a row title).

    python scripts/pair_runs.py DEST RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgereason.evalsuite.report import write_report
from edgereason.results import EvalSummary


def pair(dest: Path, runs: list[Path]) -> Path:
    """Write the paired report of `runs` (eval output folders of one benchmark) under `dest`."""
    summaries = []
    for run in runs:
        s = EvalSummary.read(run / "summary.json")
        s.target = f"{s.target} [{run.name}]"
        s.out_dir = str(run)  # the samples compared stay where the eval wrote them
        summaries.append(s)
    benchmarks = {s.benchmark for s in summaries}
    if len(benchmarks) != 1:
        raise SystemExit(f"the runs are on different benchmarks ({', '.join(sorted(benchmarks))})")
    for run, s in zip(runs, summaries, strict=True):
        s.write(dest / run.name / "summary.json")
    return write_report(summaries, dest, f"{summaries[0].benchmark}: {' vs '.join(r.name for r in runs)}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print(pair(args.dest, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
