"""`edgereason bench-train`: GRPO step time and peak memory of each speed lever, against stock TRL,
measured side by side in one run at equal settings (the same preset, data, seed, batch, group
size, completion length and LoRA).

Variants (each an `edgereason train` process, so peak RSS is its own):
- `anchor`: stock TRL `GRPOTrainer`: transformers generation, fp32, one temperature, every position
  scored (TRL's CPU path), LoRA dropout as configured, the whole batch in one forward;
- one lever at a time on top of it: `bf16`, `llama.cpp` rollouts, `compact` scoring;
- `fast`: all levers plus LoRA dropout 0 and one completion per micro-batch (same effective batch);
- `fast+checkpointing`: the same with gradient checkpointing, to show what it costs.
Step times are TRL's per-step `step_time`, the first (warm-up) step excluded; ratios are to the
anchor of the same run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from rich.console import Console
from rich.table import Table

from edgereason.cli_options import stage_command
from edgereason.config import StageConfig
from edgereason.servers import python_module

ANCHOR = ["rollout_engine=trl", "bf16=false", "compact_scoring=false", "temperature_schedule=null"]
VARIANTS: dict[str, list[str]] = {
    "anchor": ANCHOR,
    "bf16": ["rollout_engine=trl", "bf16=true", "compact_scoring=false", "temperature_schedule=null"],
    "llama.cpp": ["rollout_engine=llama.cpp", "bf16=false", "compact_scoring=false"],
    "compact": ["rollout_engine=trl", "bf16=false", "compact_scoring=true", "temperature_schedule=null"],
    "fast": ["rollout_engine=llama.cpp", "bf16=true", "compact_scoring=true", "lora_dropout=0.0", "MICRO"],
    "fast+checkpointing": ["rollout_engine=llama.cpp", "bf16=true", "compact_scoring=true", "lora_dropout=0.0", "MICRO",
                           "gradient_checkpointing=true"],
}


class TrainBenchConfig(StageConfig):
    preset: str = Field("cpu-smollm2", description="TrainConfig preset every variant starts from.")
    variants: list[str] = Field(list(VARIANTS), description=f"Variants to run: {', '.join(VARIANTS)}.")
    steps: int = Field(4, ge=2, description="GRPO steps per variant (the first is warm-up and not counted).")
    dataset: str = Field("arith-train", description="Training data of every variant.")
    out: Path = Field(Path("results/bench-train"), description="Output folder.")


def _run_variant(cfg: TrainBenchConfig, name: str, base: dict[str, Any], console: Console) -> dict[str, Any]:
    overrides = [o for o in VARIANTS[name] if o != "MICRO"]
    # The same completions per optimizer step in every variant: the whole batch in one forward, or
    # (MICRO) one completion per forward/backward with gradient accumulation.
    batch = int(base.get("per_device_train_batch_size", 8)) * int(base.get("gradient_accumulation_steps", 1))
    if "MICRO" in VARIANTS[name]:
        overrides += ["per_device_train_batch_size=1", f"gradient_accumulation_steps={batch}"]
    else:
        overrides += [f"per_device_train_batch_size={batch}", "gradient_accumulation_steps=1"]
    run_name = name.replace("+", "-").replace(".", "")
    cmd = python_module("edgereason.cli", "train", "--config", cfg.preset, "--name", run_name, "--output-root",
                        str(cfg.out / "runs"), "--overwrite", "--set", f"max_steps={cfg.steps}", "--set",
                        f"save_steps={cfg.steps * 10}", "--set", "curriculum=none", "--set", f"dataset={cfg.dataset}",
                        "--set", "early_stop=false", *[a for o in overrides for a in ("--set", o)])
    t0 = time.perf_counter()
    log = cfg.out / "logs" / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        return {"variant": name, "error": f"exit {rc}: {' | '.join(tail)}"}
    run_dir = cfg.out / "runs" / run_name
    run = json.loads((run_dir / "run.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["step_time"] for r in rows[1:] if "step_time" in r]
    lengths = [r.get("completions/mean_length", 0) for r in rows[1:]]
    console.print(f"  {name}: {statistics.median(times):.1f} s/step, peak RSS {run['peak_rss_mb']:.0f} MB "
                  f"({time.perf_counter() - t0:.0f} s)")
    return {"variant": name, "overrides": overrides, "step_s": statistics.median(times), "step_times": times,
            "peak_rss_mb": run["peak_rss_mb"], "mean_completion_tokens": statistics.fmean(lengths) if lengths else None,
            "rollout_engine": run.get("rollout_engine"), "bf16": run.get("bf16")}


def run_bench(cfg: TrainBenchConfig, console: Console | None = None) -> dict[str, Any]:
    from edgereason.config import find_config
    from edgereason.versions import versions

    console = console or Console()
    unknown = set(cfg.variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    import yaml

    base = yaml.safe_load(find_config(cfg.preset).read_text()) or {}
    order = ["anchor", *[v for v in cfg.variants if v != "anchor"]]  # the anchor first: every ratio needs it
    results = []
    for name in order:
        console.print(f"[bold]{name}[/]: {' '.join(VARIANTS[name])}")
        results.append(_run_variant(cfg, name, base, console))
    anchor = results[0]
    for r in results:
        if "step_s" in r and "step_s" in anchor:
            r["x_anchor_time"] = r["step_s"] / anchor["step_s"]
            r["x_anchor_rss"] = r["peak_rss_mb"] / anchor["peak_rss_mb"]
    import os
    import platform

    return {"preset": cfg.preset, "steps": cfg.steps, "dataset": cfg.dataset, "results": results,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "versions": versions("torch", "transformers", "trl", "peft", "llama-cpp-python")}


def write_bench(data: dict[str, Any], out: Path) -> Path:
    from edgereason.plots import pyplot, save_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-train.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    ok = [r for r in data["results"] if "step_s" in r]
    lines = ["# GRPO step time and memory, each lever against stock TRL", "",
             f"Preset `{data['preset']}`, {data['steps']} steps per variant (the first not counted), data "
             f"`{data['dataset']}`; every variant at the same batch, group, completion length and LoRA.", "",
             "| variant | s/step | × anchor | peak RSS MB | × anchor | completion tokens | settings |",
             "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} ||||||")
            continue
        lines.append(f"| {r['variant']} | {r['step_s']:.1f} | {r.get('x_anchor_time', 1):.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r.get('x_anchor_rss', 1):.2f} | {r['mean_completion_tokens']:.0f} | `{' '.join(r['overrides'])}` |")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["variant"] for r in ok]
    axes[0].bar(names, [r["step_s"] for r in ok], color="#3b6ea8")
    axes[0].set_title("seconds per GRPO step")
    axes[1].bar(names, [r["peak_rss_mb"] for r in ok], color="#e0a030")
    axes[1].axhline(2048, color="#c0392b", ls="--", lw=1, label="2 GB")
    axes[1].set_title("peak RSS (MB)")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", rotation=25, labelsize=8)
    plot = save_figure(fig, out / "bench-train.png")
    lines += ["", f"![bench-train]({plot.name})"]
    report = out / "bench-train.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def run(cfg: TrainBenchConfig) -> None:
    console = Console()
    data = run_bench(cfg, console)
    report = write_bench(data, cfg.out)
    table = Table(title="GRPO step: each lever against stock TRL (same settings)")
    for col in ("variant", "s/step", "× anchor", "peak RSS MB", "× anchor"):
        table.add_column(col)
    for r in data["results"]:
        if "error" in r:
            table.add_row(r["variant"], f"[red]{r['error'][:80]}[/]", "", "", "")
        else:
            table.add_row(r["variant"], f"{r['step_s']:.1f}", f"{r.get('x_anchor_time', 1):.2f}",
                          f"{r['peak_rss_mb']:.0f}", f"{r.get('x_anchor_rss', 1):.2f}")
    console.print(table)
    console.print(f"report: {report}")


bench_train_command = stage_command(TrainBenchConfig, run, help="GRPO step time and peak memory of each speed lever "
                                    "against stock TRL, side by side in one run.", errors=(ValueError,))
