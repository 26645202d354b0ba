"""Compare training runs' memory from their own records: each run's `run.json` (peak RSS, seconds per
step, resident memory after each phase) and `metrics.jsonl` (`rss_mb` per step).

    python scripts/compare_run_memory.py runs/anchor runs/low --labels default low_memory --out docs/results/grpo-memory80

writes memory.json, memory.md (a table; the first run is the anchor for the ratios) and memory.png
(resident memory per step, each run's peak as a dashed line).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgereason.plots import pyplot, save_figure


def _seconds_per_step(rows: list[dict[str, Any]]) -> float | None:
    """The mean step time of the logged rows: GRPO's carry each step's time, SFT's the time elapsed."""
    times = [r["step_time"] for r in rows if "step_time" in r]
    if times:
        return sum(times) / len(times)
    if len(rows) > 1 and "elapsed_s" in rows[-1]:
        return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"])
    return None


def run_memory(run_dir: Path, label: str) -> dict[str, Any]:
    """A run's memory figures. A run that did not finish (stopped, or still going) is read from its
    metrics rows: the steps it logged, the peak so far at the last one, their mean step time."""
    run = json.loads((run_dir / "run.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "rss_mb" in r]
    per_step = [(r["step"], r["rss_mb"]) for r in rows]
    finished = "peak_rss_mb" in run
    return {"label": label if finished else f"{label} (stopped at step {rows[-1]['step']})", "run": str(run_dir),
            "steps": run["steps"] if finished else rows[-1]["step"],
            "peak_rss_mb": run["peak_rss_mb"] if finished else max(r["peak_rss_mb"] for r in rows),
            "seconds_per_step": run.get("seconds_per_step") if finished else _seconds_per_step(rows),
            "low_memory": run["config"].get("low_memory", False),
            "activation_checkpointing": run.get("activation_checkpointing"),
            "threads": run["config"].get("threads"), "phases": run.get("memory", []), "rss_per_step": per_step}


def table(runs: list[dict[str, Any]]) -> str:
    anchor = runs[0]
    lines = ["| run | steps | resident MB, first step | resident MB, last step | peak MB | × anchor peak | s/step | "
             "× anchor time |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        first, last = r["rss_per_step"][0][1], r["rss_per_step"][-1][1]
        speed = (f"{r['seconds_per_step']:.1f} | {r['seconds_per_step'] / anchor['seconds_per_step']:.2f}"
                 if r["seconds_per_step"] and anchor["seconds_per_step"] else "– | –")
        lines.append(f"| {r['label']} | {r['steps']} | {first:.0f} | {last:.0f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / anchor['peak_rss_mb']:.2f} | {speed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (the first is the anchor)")
    ap.add_argument("--labels", nargs="+", help="one label per run (default: folder names)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        ap.error(f"{len(args.runs)} runs but {len(labels)} labels")
    runs = [run_memory(r, label) for r, label in zip(args.runs, labels)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(runs, indent=2) + "\n")
    (args.out / "memory.md").write_text(table(runs))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        steps, rss = zip(*r["rss_per_step"])
        line = ax.plot(steps, rss, label=f"{r['label']} (peak {r['peak_rss_mb']:.0f} MB)")[0]
        ax.axhline(r["peak_rss_mb"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("resident memory (MB)")
    ax.legend()
    save_figure(fig, args.out / "memory.png")
    print(table(runs))


if __name__ == "__main__":
    main()
