"""The quant ladder's frontier: size against agreement with the merged model, one point per candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgereason.plots import pyplot, save_figure


def ladder_plot(manifest: dict[str, Any], path: Path) -> Path:
    """Panels over size (MiB, what serving loads: base + adapter for the LoRA candidate): top-1
    agreement, mean KL, answer-level agreement and format compliance, and with an accuracy check the
    held-out accuracy (the merged model's a gray line); the chosen candidate ringed, each target drawn
    as a dashed line."""
    plt = pyplot()
    ladder = manifest["ladder"]
    rows = sorted(ladder["candidates"], key=lambda c: c["size_bytes"])
    size = [c["size_bytes"] / 2**20 for c in rows]
    answers = [c.get("answers") or {} for c in rows]
    panels = [
        ("top-1 agreement", [c["top1_agreement"] for c in rows], ladder["targets"].get("top1_agreement")),
        ("mean KL (merged ‖ artifact)", [c["mean_kl"] for c in rows], ladder["targets"].get("mean_kl")),
        ("greedy answers = merged", [a.get("answer_agreement", float("nan")) for a in answers],
         ladder["targets"].get("answer_agreement")),
    ]
    accuracy = [c.get("accuracy") or {} for c in rows]
    merged = next((a["reference_accuracy"] for a in accuracy if a), None)
    if merged is not None:
        drop = ladder["targets"].get("accuracy_drop_points")
        panels.append(("held-out accuracy", [a.get("accuracy", float("nan")) for a in accuracy],
                       None if drop is None else merged - drop / 100))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8))
    lora = [i for i, c in enumerate(rows) if c["quant"] == "lora"]
    quant = [i for i in range(len(rows)) if i not in lora]
    for ax, (title, ys, target) in zip(axes, panels):
        # The quants of the merged model are one frontier; the adapter on the base is a point of its own.
        ax.plot([size[i] for i in quant], [ys[i] for i in quant], "o-", color="tab:blue", label="merged, quantized")
        if lora:
            ax.plot([size[i] for i in lora], [ys[i] for i in lora], "D", color="tab:purple", label="base GGUF + LoRA")
        for x, y, c in zip(size, ys, rows):
            label = "base+LoRA" if c["quant"] == "lora" else c["quant"]
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 4), fontsize=8)
            if c.get("file") == manifest.get("chosen"):
                ax.plot([x], [y], "o", ms=13, mfc="none", mec="tab:green", mew=2)
        if title.startswith("top-1") and any(c.get("top1_confident") is not None for c in rows):
            # the same agreement off the merged model's near-ties: what is left is real damage
            sure = [c.get("top1_confident") or float("nan") for c in rows]
            ax.plot([size[i] for i in quant], [sure[i] for i in quant], "^:", color="tab:gray", label="off near-ties")
            ax.plot([size[i] for i in lora], [sure[i] for i in lora], "^", color="tab:gray")
        if title.startswith("greedy"):
            ax.plot([size[i] for i in quant], [answers[i].get("format_compliance", float("nan")) for i in quant], "s--",
                    color="tab:orange", label="format compliance")
            ax.plot([size[i] for i in lora], [answers[i].get("format_compliance", float("nan")) for i in lora], "s",
                    color="tab:orange")
        if lora or not title.startswith("mean"):
            ax.legend(fontsize=7)
        if target is not None:
            ax.axhline(target, ls="--", color="tab:red", lw=1)
        if title.startswith("held-out") and merged is not None:
            ax.axhline(merged, color="tab:gray", lw=1, label="merged model")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("size (MiB)")
        ax.grid(alpha=0.3)
    chosen = manifest.get("chosen")
    fig.suptitle(f"quant ladder: chosen {chosen}" if chosen else "quant ladder: no candidate meets the targets", fontsize=11)
    return save_figure(fig, path)
