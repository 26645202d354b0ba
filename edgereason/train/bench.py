"""`edgereason bench-train`: step time, throughput and peak memory of each speed lever against the
stock TRL trainer, measured side by side in one run at equal settings (the same preset, data, seed,
batch, lengths and LoRA). Each variant is an `edgereason train` process, so its peak RSS is its own;
ratios are to the anchor of the same run, the first (warm-up) step excluded.

GRPO (`--method grpo`, the default):
- `anchor`: stock TRL `GRPOTrainer`: transformers generation, fp32, one temperature, every position
  scored (TRL's CPU path), LoRA dropout as configured, the whole batch in one forward;
- one lever at a time on top of it: `bf16`, `llama.cpp` rollouts, `compact` scoring;
- `fast`: all levers plus LoRA dropout 0 and one completion per micro-batch (same effective batch);
- `fast+checkpointing`: the same with gradient checkpointing, to show what it costs.
Step times are TRL's per-step `step_time`.

SFT (`--method sft`), on the checked rationales of the same data:
- `anchor`: stock TRL `SFTTrainer` defaults (`SFTConfig`: bf16, activation checkpointing on, random
  batches padded to their longest row);
- one lever at a time: `fp32`, `no-checkpointing`, `group-by-length` (batches of similar length),
  `padding-free` (a batch's rows back to back in one row);
- `fast`: no checkpointing, batches grouped by length, LoRA dropout 0.
Throughput is training tokens (real ones, padding excluded: TRL's `num_tokens`) per second between
the first and the last step.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console
from rich.table import Table

from edgereason.cli_options import stage_command
from edgereason.config import StageConfig
from edgereason.console import make_console
from edgereason.servers import python_module

ANCHOR = ["rollout_engine=trl", "bf16=false", "compact_scoring=false", "temperature_schedule=null"]
GRPO_VARIANTS: dict[str, list[str]] = {
    "anchor": ANCHOR,
    "bf16": ["rollout_engine=trl", "bf16=true", "compact_scoring=false", "temperature_schedule=null"],
    "llama.cpp": ["rollout_engine=llama.cpp", "bf16=false", "compact_scoring=false"],
    "compact": ["rollout_engine=trl", "bf16=false", "compact_scoring=true", "temperature_schedule=null"],
    "fast": ["rollout_engine=llama.cpp", "bf16=true", "compact_scoring=true", "lora_dropout=0.0", "MICRO"],
    "fast+checkpointing": ["rollout_engine=llama.cpp", "bf16=true", "compact_scoring=true", "lora_dropout=0.0", "MICRO",
                           "gradient_checkpointing=true"],
}
# TRL's SFTConfig defaults, each lever written out so that every variant states all five (TRL scores
# every position in its fused LM head off-GPU: compact_scoring=false is stock).
SFT_ANCHOR = ["bf16=true", "gradient_checkpointing=true", "group_by_length=false", "padding_free=false",
              "compact_scoring=false"]
SFT_VARIANTS: dict[str, list[str]] = {
    "anchor": SFT_ANCHOR,
    "fp32": ["bf16=false", "gradient_checkpointing=true", "group_by_length=false", "padding_free=false",
             "compact_scoring=false"],
    "no-checkpointing": ["bf16=true", "gradient_checkpointing=false", "group_by_length=false", "padding_free=false",
                         "compact_scoring=false"],
    "compact": ["bf16=true", "gradient_checkpointing=true", "group_by_length=false", "padding_free=false",
                "compact_scoring=true"],
    "group-by-length": ["bf16=true", "gradient_checkpointing=true", "group_by_length=true", "padding_free=false",
                        "compact_scoring=false"],
    # Padding-free is left out of the default: without a varlen attention kernel (CPU) one long masked
    # row is slower than the padded batch (0.66-0.80x in two runs here, `bench-train --method sft`).
    "padding-free": ["bf16=true", "gradient_checkpointing=true", "group_by_length=false", "padding_free=true",
                     "compact_scoring=false"],
    # What `train --method sft` and the SFT presets run: TrainConfig's own defaults for these levers.
    "default": ["bf16=true", "gradient_checkpointing=false", "group_by_length=false", "padding_free=false",
                "compact_scoring=true"],
    # The SFT presets keep PEFT's usual lora_dropout 0.05, a dropout copy of every adapted linear's
    # input (the cpu-smollm2 preset the table is run from has 0.0 already: --preset cpu-smollm2-sft).
    "default-no-dropout": ["bf16=true", "gradient_checkpointing=false", "group_by_length=false", "padding_free=false",
                           "compact_scoring=true", "lora_dropout=0.0"],
    # The 4-8 GB device setting: activations recomputed, the LM head in small tiles, the allocator's
    # settings (README "Memory"); it implies checkpointing, written out here like every lever.
    "low-memory": ["bf16=true", "gradient_checkpointing=true", "group_by_length=false", "padding_free=false",
                   "compact_scoring=true", "low_memory=true"],
}
VARIANTS: dict[str, dict[str, list[str]]] = {"grpo": GRPO_VARIANTS, "sft": SFT_VARIANTS}
# What every variant of a method runs with besides its levers: no curriculum or early stop in GRPO
# (the same problems for all); for SFT no dev loss (evaluation is not training throughput).
COMMON: dict[str, list[str]] = {"grpo": ["curriculum=none", "early_stop=false"],
                                "sft": ["method=sft", "stages=null", "curriculum=none", "dev=null", "logging_steps=1"]}


class TrainBenchConfig(StageConfig):
    method: Literal["grpo", "sft"] = Field("grpo", description="The trainer benchmarked.")
    preset: str = Field("cpu-smollm2", description="TrainConfig preset every variant starts from.")
    variants: list[str] | None = Field(None, description="Variants to run (default: all of the method's): grpo: "
                                       f"{', '.join(GRPO_VARIANTS)}; sft: {', '.join(SFT_VARIANTS)}.")
    steps: int = Field(4, ge=2, description="Steps per variant (the first is warm-up and not counted).")
    dataset: str = Field("arith-train", description="Training data of every variant.")
    out: Path = Field(Path("results/bench-train"), description="Output folder.")


def _run_variant(cfg: TrainBenchConfig, name: str, base: dict[str, Any], console: Console) -> dict[str, Any]:
    levers = VARIANTS[cfg.method][name]
    overrides = [o for o in levers if o != "MICRO"]
    # The same completions per optimizer step in every variant: the whole batch in one forward, or
    # (MICRO) one completion per forward/backward with gradient accumulation.
    batch = int(base.get("per_device_train_batch_size", 8)) * int(base.get("gradient_accumulation_steps", 1))
    if "MICRO" in levers:
        overrides += ["per_device_train_batch_size=1", f"gradient_accumulation_steps={batch}"]
    else:
        overrides += [f"per_device_train_batch_size={batch}", "gradient_accumulation_steps=1"]
    run_name = name.replace("+", "-").replace(".", "")
    cmd = python_module("edgereason.cli", "train", "--config", cfg.preset, "--name", run_name, "--output-root",
                        str(cfg.out / "runs"), "--overwrite", "--set", f"max_steps={cfg.steps}", "--set",
                        f"save_steps={cfg.steps * 10}", "--set", f"dataset={cfg.dataset}",
                        *[a for o in [*COMMON[cfg.method], *overrides] for a in ("--set", o)])
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
    result: dict[str, Any] = {"variant": name, "overrides": overrides, "peak_rss_mb": run["peak_rss_mb"],
                              "bf16": run.get("bf16")}
    if cfg.method == "sft":
        result.update(_sft_speed(rows))
    else:
        times = [r["step_time"] for r in rows[1:] if "step_time" in r]
        lengths = [r.get("completions/mean_length", 0) for r in rows[1:]]
        result.update(step_s=statistics.median(times), step_times=times, rollout_engine=run.get("rollout_engine"),
                      mean_completion_tokens=statistics.fmean(lengths) if lengths else None)
    tps = f", {result['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in result else ""
    console.print(f"  {name}: {result['step_s']:.1f} s/step{tps}, peak RSS {run['peak_rss_mb']:.0f} MB "
                  f"({time.perf_counter() - t0:.0f} s)")
    return result


def _sft_speed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Step time and training tokens/s from the SFT record's per-step rows (elapsed seconds, cumulative
    real tokens), the first step left out as warm-up."""
    steps = [r for r in rows if "loss" in r and "elapsed_s" in r]
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
    tokens = steps[-1]["num_tokens"] - steps[0]["num_tokens"]
    seconds = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    return {"step_s": statistics.median(times), "step_times": times, "tokens_per_s": tokens / seconds,
            "tokens_per_step": tokens / len(times)}


def run_bench(cfg: TrainBenchConfig, console: Console | None = None) -> dict[str, Any]:
    from edgereason.config import find_config
    from edgereason.versions import versions

    console = console or make_console()
    variants = VARIANTS[cfg.method]
    chosen = cfg.variants or list(variants)
    unknown = set(chosen) - set(variants)
    if unknown:
        raise ValueError(f"unknown {cfg.method} variants {sorted(unknown)}; choose from {', '.join(variants)}")
    import yaml

    base = yaml.safe_load(find_config(cfg.preset).read_text()) or {}
    order = ["anchor", *[v for v in chosen if v != "anchor"]]  # the anchor first: every ratio needs it
    results = []
    for name in order:
        console.print(f"[bold]{name}[/]: {' '.join(variants[name])}")
        results.append(_run_variant(cfg, name, base, console))
    anchor = results[0]
    for r in results:
        if "step_s" in r and "step_s" in anchor:
            r["x_anchor_time"] = r["step_s"] / anchor["step_s"]
            r["x_anchor_rss"] = r["peak_rss_mb"] / anchor["peak_rss_mb"]
        if "tokens_per_s" in r and "tokens_per_s" in anchor:
            r["x_anchor_tokens_per_s"] = r["tokens_per_s"] / anchor["tokens_per_s"]
    import os
    import platform

    return {"method": cfg.method, "preset": cfg.preset, "steps": cfg.steps, "dataset": cfg.dataset, "results": results,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "versions": versions("torch", "transformers", "trl", "peft", "llama-cpp-python")}


def _columns(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's measured columns for the method: (header, value of a result row)."""
    cols: list[tuple[str, Any]] = [("s/step", lambda r: f"{r['step_s']:.1f}"),
                                   ("× anchor", lambda r: f"{r.get('x_anchor_time', 1):.2f}")]
    if data.get("method") == "sft":
        cols += [("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
                 ("× anchor", lambda r: f"{r.get('x_anchor_tokens_per_s', 1):.2f}")]
    cols += [("peak RSS MB", lambda r: f"{r['peak_rss_mb']:.0f}"),
             ("× anchor", lambda r: f"{r.get('x_anchor_rss', 1):.2f}")]
    if data.get("method") != "sft":
        cols.append(("completion tokens", lambda r: f"{r['mean_completion_tokens']:.0f}"))
    return cols


def _title(data: dict[str, Any]) -> str:
    trainer = "SFTTrainer" if data.get("method") == "sft" else "TRL"
    return f"{data.get('method', 'grpo').upper()} step: each lever against stock {trainer} (same settings)"


def write_bench(data: dict[str, Any], out: Path) -> Path:
    from edgereason.plots import pyplot, save_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-train.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    ok = [r for r in data["results"] if "step_s" in r]
    cols = _columns(data)
    sft = data.get("method") == "sft"
    lines = [f"# {_title(data)}", "",
             f"Preset `{data['preset']}`, {data['steps']} steps per variant (the first not counted), data "
             f"`{data['dataset']}`; every variant at the same batch, lengths and LoRA.", "",
             "| variant | " + " | ".join(h for h, _ in cols) + " | settings |",
             "|---" * (len(cols) + 2) + "|"]
    for r in data["results"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} " + "|" * (len(cols) + 1))
            continue
        lines.append(f"| {r['variant']} | " + " | ".join(f(r) for _, f in cols) + f" | `{' '.join(r['overrides'])}` |")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [r["variant"] for r in ok]
    if sft:
        axes[0].bar(names, [r["tokens_per_s"] for r in ok], color="#3b6ea8")
        axes[0].set_title("training tokens per second")
    else:
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
    console = make_console()
    data = run_bench(cfg, console)
    report = write_bench(data, cfg.out)
    cols = _columns(data)
    table = Table(title=_title(data))
    for col in ("variant", *[h for h, _ in cols]):
        table.add_column(col)
    for r in data["results"]:
        if "error" in r:
            table.add_row(r["variant"], f"[red]{r['error'][:80]}[/]", *[""] * (len(cols) - 1))
        else:
            table.add_row(r["variant"], *[f(r) for _, f in cols])
    console.print(table)
    console.print(f"report: {report}")


bench_train_command = stage_command(TrainBenchConfig, run, help="Step time, throughput and peak memory of each speed "
                                    "lever against the stock TRL trainer (GRPO or --method sft), side by side in one "
                                    "run.", errors=(ValueError,))
