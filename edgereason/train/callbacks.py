"""Trainer callbacks: the GRPO controls (adaptive ε, adaptive β, early stop) and run records
(metrics JSONL, completion samples, a rich progress bar)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from edgereason.compat.trl import clip_low, kl_beta, set_clip_range, set_kl_beta
from edgereason.console import make_progress
from edgereason.train.memory import MemoryLedger, return_freed_memory
from edgereason.train.schedules import AdaptiveKL, SaturationDetector, adaptive_epsilon


class BatchStats:
    """What the reward functions saw since the last step: format compliance, completion samples, and
    each completion's problem and correctness (the curriculum's measurements)."""

    def __init__(self, fmt: Any) -> None:
        self.fmt = fmt
        self.valid: list[bool] = []
        self.samples: list[dict[str, Any]] = []
        self.results: list[tuple[str, bool]] = []

    def __call__(self, prompts: list[str], texts: list[str], scores: dict[str, list[float]],
                 ids: list[str] | None = None, correct: list[bool] | None = None) -> None:
        self.valid.extend(self.fmt.parse(t).valid for t in texts)
        self.samples = [
            {"prompt": p[-300:], "completion": t, "accuracy": a}
            for p, t, a in zip(prompts or [""] * len(texts), texts, scores.get("accuracy", []))
        ]
        if ids is not None and correct is not None:
            self.results.extend(zip(ids, correct))

    def pop_compliance(self) -> float | None:
        value = sum(self.valid) / len(self.valid) if self.valid else None
        self.valid = []
        return value

    def pop_groups(self) -> dict[str, list[bool]]:
        """Correctness of the completions of each problem since the last call."""
        groups: dict[str, list[bool]] = {}
        for pid, ok in self.results:
            groups.setdefault(pid, []).append(ok)
        self.results = []
        return groups


class GRPOControlCallback(TrainerCallback):
    """Applies ε(t) before each step and the adaptive-KL β after each log; stops on saturation."""

    def __init__(self, cfg: Any, reward_ceiling: float) -> None:
        self.cfg = cfg
        self.trainer: Any = None  # set once the trainer exists
        self.kl = AdaptiveKL(cfg.beta, target=cfg.kl_target) if cfg.adaptive_kl and cfg.beta > 0 else None
        self.stopper = (
            SaturationDetector(reward_ceiling, cfg.early_stop_fraction, patience=cfg.early_stop_patience)
            if cfg.early_stop
            else None
        )
        self.stop_reason: str | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.trainer is None or not self.cfg.adaptive_epsilon:
            return
        eps = adaptive_epsilon(state.global_step, self.cfg.epsilon, self.cfg.epsilon_tau, self.cfg.epsilon_min)
        high_ratio = (self.cfg.epsilon_high or self.cfg.epsilon) / self.cfg.epsilon
        set_clip_range(self.trainer, eps, eps * high_ratio)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = logs or {}
        if self.trainer is not None:
            if self.kl is not None and "kl" in logs:
                set_kl_beta(self.trainer, self.kl.update(float(logs["kl"])))
            logs["beta"] = kl_beta(self.trainer)
            logs["epsilon"] = clip_low(self.trainer)
        if self.stopper is not None and "reward" in logs:
            reason = self.stopper.update(logs.get("reward"), logs.get("grad_norm"))
            if reason:
                self.stop_reason = reason
                control.should_training_stop = True


class CurriculumCallback(TrainerCallback):
    """Keeps the curriculum pool current: each step's groups are measurements of their problems, every
    `curriculum_refresh_steps` a sample of the pool is measured again with the current adapter, and
    the pool is saved with every checkpoint (resume continues it)."""

    def __init__(self, pool: Any, stats: BatchStats, cfg: Any, run_dir: Path,
                 refresh: Callable[[list[Any], int], dict[str, float]] | None) -> None:
        self.pool, self.stats, self.cfg, self.refresh = pool, stats, cfg, refresh
        self.path = run_dir / "curriculum.json"
        self.figures: dict[str, float] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        groups = self.stats.pop_groups()
        tied = sum(len(set(g)) == 1 for g in groups.values()) / len(groups) if groups else None
        for pid, correct in groups.items():
            self.pool.observe(pid, correct)
        every = self.cfg.curriculum_refresh_steps
        if self.refresh is not None and every and state.global_step % every == 0:
            problems = self.pool.to_refresh(self.cfg.curriculum_refresh_size, state.global_step)
            before = len(self.pool.active)
            self.pool.apply(self.refresh(problems, state.global_step), samples=self.cfg.curriculum_samples)
            self.pool.history.append({"step": state.global_step, "measured": len(problems),
                                      "joined_band": len(self.pool.active) - before, **self.pool.sizes()})
        sizes = self.pool.sizes()
        self.figures = {f"curriculum/{k}": float(v) for k, v in sizes.items()}
        if tied is not None:
            self.figures["curriculum/frac_correctness_tied"] = tied

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs is not None and "reward" in logs:
            logs.update(self.figures)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.pool.save(self.path)


class RunRecordCallback(TrainerCallback):
    """Per-step metrics (with the resident memory) to metrics.jsonl, completion samples to
    samples.jsonl, and a progress bar; the run's first and last steps are marked in `memory`."""

    def __init__(self, run_dir: Path, stats: BatchStats, sample_every: int, show_progress: bool = True,
                 memory: MemoryLedger | None = None) -> None:
        self.memory = memory or MemoryLedger()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.stats = stats
        self.sample_every = sample_every
        self.progress = make_progress("GRPO", disable=not show_progress)
        self.task: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:  # one record per run: the main process writes it
            return
        # After a resume, drop records of steps past the checkpoint: they are being redone.
        if self.metrics_path.exists():
            kept = [
                line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= state.global_step
            ]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        self.progress.start()
        self.task = self.progress.add_task("starting", total=state.max_steps, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        logs = dict(logs or {})
        if "reward" not in logs or not state.is_world_process_zero:  # the final summary, or not the main process
            return
        compliance = self.stats.pop_compliance()
        record = {"step": state.global_step, "format_compliance": compliance, **logs,
                  **self.memory.step(state.global_step)}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if state.global_step % self.sample_every == 0 and self.stats.samples:
            with self.samples_path.open("a") as fh:
                for s in self.stats.samples[:4]:
                    fh.write(json.dumps({"step": state.global_step, **s}, ensure_ascii=False) + "\n")
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=state.global_step,
                description=(
                    f"reward {logs.get('reward', 0):+.2f}  format {compliance if compliance is not None else 0:.0%}  "
                    f"kl {logs.get('kl', 0):.4f}  len {logs.get('completions/mean_length', 0):.0f}"
                    + (f"  band {logs['curriculum/active']:.0f}" if "curriculum/active" in logs else "")
                ),
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.progress.stop()
        if state.is_world_process_zero:
            self.memory.end(state.global_step)


class ReturnFreedMemory(TrainerCallback):
    """`low_memory`: after each optimizer step (its activations freed), hand freed heap pages back."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        return_freed_memory()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise_metrics(rows: list[dict[str, Any]], last: int = 5) -> dict[str, float]:
    """Mean of the last `last` logged steps for the headline metrics."""
    keys = ["reward", "format_compliance", "kl", "completions/mean_length", "grad_norm", "frac_reward_zero_std",
            "curriculum/frac_correctness_tied", "sampling/importance_sampling_ratio/mean"] + [
        k for k in (rows[-1] if rows else {}) if k.startswith("rewards/") and k.endswith("/mean")
    ]
    tail = rows[-last:]
    out = {}
    for k in keys:
        vals = [r[k] for r in tail if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = round(statistics.fmean(vals), 4)
    return out
