"""One entry for every training method: `edgereason train`, the hybrid's stages and the pipeline all
run a config through `run_method`."""

from __future__ import annotations

from edgereason.train.config import TrainConfig
from edgereason.train.runs import RunResult


def run_method(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    from edgereason.train.runs import is_main_process

    show_progress = show_progress and is_main_process()  # one console for a distributed run
    if cfg.stages:
        from edgereason.train.hybrid import run_stages

        return run_stages(cfg, show_progress)
    if cfg.method in ("sft", "gkd"):
        from edgereason.train.sft import run_sft

        return run_sft(cfg, show_progress)
    if cfg.method in ("distill", "rft"):
        from edgereason.train.distill import run_distill

        return run_distill(cfg, show_progress)
    from edgereason.train.grpo import run_training

    return run_training(cfg, show_progress)
