"""Hybrids in one command: `stages: [sft, grpo]` runs SFT, then GRPO continuing the SFT LoRA.

Each stage is an ordinary run under the hybrid's folder (`runs/<name>/1-sft`, `runs/<name>/2-grpo`),
with the hybrid's settings and its `stage_settings[method]` on top, and `init_adapter` set to the
previous stage's adapter. The LoRA is continued, not merged and stacked: the export then sees one
adapter on the untouched base (the base + LoRA artifacts stay exact), and the GRPO rollouts hot-swap
the same LoRA into llama.cpp. Re-running the command skips finished stages and resumes the stage
that was interrupted. `runs/<name>/adapter` is the last stage's adapter; run.json and report.md
show each stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from edgereason.files import atomic_output, write_text_atomic
from edgereason.train.config import TrainConfig
from edgereason.train.runs import FINISHED, RunResult, TrainSetupError, is_main_process


def stage_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """Each stage's config (the adapter it continues is filled in as the stages run)."""
    assert cfg.stages is not None
    base = cfg.model_dump(exclude={"stages", "stage_settings"})
    return [TrainConfig.model_validate({**base, **cfg.stage_settings.get(method, {}), "method": method,
                                        "name": f"{i}-{method}", "output_root": cfg.run_dir})
            for i, method in enumerate(cfg.stages, 1)]


def _finished(run_dir: Path) -> dict[str, Any] | None:
    record = run_dir / "run.json"
    if not record.is_file():
        return None
    data: dict[str, Any] = json.loads(record.read_text())
    return data if data.get("status") == FINISHED else None


def run_stages(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    from edgereason.console import make_console
    from edgereason.train.methods import run_method

    console = make_console(quiet=not show_progress)
    root = cfg.run_dir
    if _finished(root) and not cfg.overwrite:
        raise TrainSetupError(f"{root} holds a finished run; pass --overwrite to replace it or choose another --name")
    t0 = time.perf_counter()
    adapter = cfg.init_adapter
    summaries: list[dict[str, Any]] = []
    result: RunResult | None = None
    for stage in stage_configs(cfg):
        stage = stage.model_copy(update={"init_adapter": adapter})
        done = _finished(stage.run_dir) if not cfg.overwrite else None
        if done is not None:
            console.print(f"[bold]{stage.name}[/]: finished earlier, continuing from its adapter")
            result = RunResult(stage.run_dir, stage.run_dir / "adapter", int(done.get("steps", 0)),
                               str(done.get("stop_reason")), dict(done.get("final_metrics") or {}), 0.0)
        else:
            console.print(f"[bold]{stage.name}[/]: {stage.method}" + (f" from {adapter}" if adapter else ""))
            result = run_method(stage, show_progress)
        adapter = result.adapter_dir
        if not is_main_process():  # the next stage's set-up waits for the main process to have written this one
            continue
        summaries.append({"stage": stage.name, "method": stage.method, "run_dir": str(stage.run_dir),
                          **{k: v for k, v in json.loads((stage.run_dir / "run.json").read_text()).items()
                             if k in ("steps", "stop_reason", "final_metrics", "wall_seconds", "peak_rss_mb")}})
    assert result is not None and adapter is not None
    if not is_main_process():
        return result
    final = root / "adapter"
    with atomic_output(final) as tmp:
        shutil.copytree(adapter, tmp)
    seconds = time.perf_counter() - t0
    write_text_atomic(root / "run.json", json.dumps({
        "name": cfg.name, "status": FINISHED, "method": "+".join(cfg.stages or []), "config": cfg.model_dump(mode="json"),
        "stages": summaries, "steps": sum(int(s.get("steps", 0)) for s in summaries), "stop_reason": "stages",
        "final_metrics": result.metrics, "wall_seconds": round(seconds, 1),
        "peak_rss_mb": max((float(s.get("peak_rss_mb") or 0) for s in summaries), default=0.0)}, indent=2))
    lines = [f"# Hybrid run `{cfg.name}`: {' → '.join(cfg.stages or [])}", "",
             "Each stage continues the previous stage's LoRA; the last stage's adapter is this run's `adapter/`.", "",
             "| stage | steps | wall s | peak RSS MB | final metrics | report |", "|---|---|---|---|---|---|"]
    for s in summaries:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (s.get("final_metrics") or {}).items()
                            if isinstance(v, (int, float)))[:200]
        lines.append(f"| {s['stage']} | {s.get('steps')} | {s.get('wall_seconds')} | {s.get('peak_rss_mb')} | {metrics} "
                     f"| [{s['stage']}/report.md]({s['stage']}/report.md) |")
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return RunResult(root, final, result.steps, "stages", result.metrics, seconds)
