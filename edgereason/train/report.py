"""The run's Markdown report and PNG plot of every reward component, KL, length and compliance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgereason.train.memory import MemoryLedger


def plot_metrics(rows: list[dict[str, Any]], out: Path) -> Path | None:
    if not rows:
        return None
    from edgereason.plots import pyplot, save_figure

    plt = pyplot()
    steps = [r["step"] for r in rows]
    reward_keys = sorted(k for k in rows[-1] if k.startswith("rewards/") and k.endswith("/mean"))
    panels = [
        ("Reward components (mean)", reward_keys),
        ("Total reward", ["reward"]),
        ("Format compliance", ["format_compliance"]),
        ("KL to reference / β", ["kl", "beta"]),
        ("Completion length (tokens)", ["completions/mean_length"]),
        ("Clip ε and grad norm", ["epsilon", "grad_norm"]),
        ("Curriculum: problems in the band", ["curriculum/active", "curriculum/parked", "curriculum/retired"]),
        ("Groups with tied correctness / zero reward std", ["curriculum/frac_correctness_tied", "frac_reward_zero_std"]),
        ("Resident memory (MB)", ["rss_mb", "peak_rss_mb"]),
    ]
    fig, axes = plt.subplots(5, 2, figsize=(12, 16))
    axes.flat[-1].set_visible(False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for k in keys:
            ys = [r.get(k) for r in rows]
            pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=k.replace("rewards/", "").replace("/mean", ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1 and ax.get_legend_handles_labels()[0]:  # a panel with no data (e.g. KL at β = 0) has none
            ax.legend(fontsize=8)
    return save_figure(fig, out)


def write_report(run_dir: Path, cfg: Any, rows: list[dict[str, Any]], metrics: dict[str, float], stop_reason: str,
                 timing: dict[str, Any], memory: MemoryLedger | None = None) -> Path:
    plot = plot_metrics(rows, run_dir / "metrics.png")
    first = rows[0] if rows else {}
    lines = [
        f"# GRPO run `{cfg.name}`",
        "",
        f"Base model `{cfg.model}`, data `{cfg.dataset}`, format `{cfg.format}`, "
        f"{'full fine-tune' if cfg.full_finetune else f'LoRA r={cfg.lora_r}'}, loss `{cfg.loss_type}`.",
        f"Steps: {rows[-1]['step'] if rows else 0} (stopped: {stop_reason}); "
        f"{timing['seconds_per_step']} s/step; peak RSS {timing['peak_rss_mb']:.0f} MB.",
        "",
        "| metric | first step | last 5 steps (mean) |",
        "|---|---|---|",
    ]
    for k, v in metrics.items():
        f0 = first.get(k)
        lines.append(f"| {k} | {f0:.4g} | {v:.4g} |" if isinstance(f0, (int, float)) else f"| {k} | – | {v:.4g} |")
    if memory is not None:
        lines += memory.report_lines()
    if plot:
        lines += ["", "![metrics](metrics.png)"]
    lines += ["", f"Adapter: `{run_dir / ('model' if cfg.full_finetune else 'adapter')}`. Evaluate it with",
              f"`edgereason eval --model {cfg.model} --adapter {run_dir / 'adapter'} --limit 100`."]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
