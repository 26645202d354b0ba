"""SFT on checked rationales (`train --method sft`): TRL's `SFTTrainer` with the same PEFT LoRA, run
folder, checkpoints, resume and run record as GRPO. `--method gkd` runs the same with TRL's
`GKDTrainer` and a teacher's logits (`edgereason.train.gkd`).

Each training row is a prompt and a completion. The prompt is built exactly as GRPO, eval and serve
build it (`grpo.build_prompt`: the format's system prompt, the model's chat template, the prefill);
the completion is the worked solution in the format (`ReasoningFormat.render`, without the prefill
the prompt already ends with), and TRL puts the loss on the completion only and ends it with the
tokenizer's end-of-turn token. Rationales come from `edgereason.rationales`, each checked (its steps
compute, its answer is its last computed value); the faults are written to `rationale-faults.txt`
and counted in run.json, never trained on. A dev loss is evaluated at every checkpoint and the
checkpoint with the lowest one becomes the run's adapter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgereason.console import make_console, make_progress
from edgereason.data import load_benchmark
from edgereason.files import atomic_output, write_text_atomic
from edgereason.formats import ReasoningFormat
from edgereason.problems import Problem
from edgereason.rationales import Rationale, rationales
from edgereason.train.config import TrainConfig
from edgereason.train.memory import MemoryLedger, peak_rss_mb
from edgereason.train.runs import (
    FINISHED,
    Prepared,
    RunResult,
    TrainSetupError,
    build_prompt,
    is_main_process,
    load_policy,
    load_tokenizer,
    model_init_kwargs,
    prepare_run,
    recomputes_activations,
    replicas_in_sync,
    report_to,
    save_on_other_ranks,
    start_run_dir,
    wire_reporting,
    write_run_json,
)


def completion_text(fmt: ReasoningFormat, r: Rationale, prefill: bool) -> str:
    """The completion the model learns: the rationale in the format, after the prefill."""
    text = fmt.render(r.reasoning, r.answer)
    return text.removeprefix(fmt.prefill) if prefill else text


def split_rationales(cfg: TrainConfig, problems: list[Problem]) -> tuple[list[Rationale], list[Rationale], list[str]]:
    """(train, dev, faults): checked rationales of the training problems and of the dev data."""
    train, faults = rationales(problems, cfg.calculator)
    if not train:
        raise TrainSetupError(f"no usable rationale in {cfg.dataset}: " + "; ".join(faults[:3]))
    dev: list[Rationale] = []
    if cfg.dev == "holdout":
        if len(train) <= cfg.dev_size:
            raise TrainSetupError(f"{len(train)} rationales cannot spare dev_size={cfg.dev_size} for a holdout")
        train, dev = train[: -cfg.dev_size], train[-cfg.dev_size:]
    elif cfg.dev:
        try:
            dev_problems = load_benchmark(cfg.dev, cfg.data_dir)
        except (ValueError, FileNotFoundError) as e:
            raise TrainSetupError(f"dev data {cfg.dev!r}: {e}") from e
        dev, _ = rationales(dev_problems[: cfg.dev_size * 2], cfg.calculator)
        dev = dev[: cfg.dev_size]
        if not dev:
            raise TrainSetupError(f"dev data {cfg.dev!r} has no usable rationale")
    return train, dev, faults


def _rows(rs: list[Rationale], tokenizer: Any, fmt: ReasoningFormat, cfg: TrainConfig) -> list[dict[str, Any]]:
    from edgereason.train.gkd import conversation

    return [{"prompt": build_prompt(tokenizer, fmt, r.problem.prompt, cfg.prefill),
             "completion": completion_text(fmt, r, cfg.prefill),
             **({"messages": conversation(fmt, r)} if cfg.method == "gkd" else {})} for r in rs]


def _fits(rows: list[dict[str, Any]], tokenizer: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Rows whose prompt and completion fit the configured lengths (a cut rationale teaches a cut answer)."""
    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [r for r in rows if n(r["prompt"]) <= cfg.max_prompt_length and n(r["completion"]) < cfg.max_completion_length]


def _bar_text(last: dict[str, float]) -> str:
    """The SFT bar's figures: the last training loss, and the dev loss once there is one (not "nan"
    until the first evaluation)."""
    parts = [f"{name} {last[key]:.3f}" for name, key in (("loss", "loss"), ("dev", "eval_loss")) if key in last]
    return "  ".join(parts) or "starting"


class _Record:
    """metrics.jsonl rows (train loss, dev loss, learning rate, tokens) and a progress bar."""

    def __init__(self, run_dir: Path, show_progress: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.progress = make_progress("SFT", disable=not show_progress)
        self.task: Any = None
        self.last: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.memory = MemoryLedger()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        record = self

        class SFTRecordCallback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if not state.is_world_process_zero:
                    return
                if record.path.exists():  # a resumed run redoes the steps past its checkpoint
                    kept = [line for line in record.path.read_text().splitlines()
                            if line.strip() and json.loads(line).get("step", 0) <= state.global_step]
                    record.path.write_text("".join(line + "\n" for line in kept))
                record.t0 = time.perf_counter()
                record.progress.start()
                record.task = record.progress.add_task("starting", total=state.max_steps, completed=state.global_step)

            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
                logs = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
                if not state.is_world_process_zero or not ({"loss", "eval_loss"} & set(logs)):
                    return
                record.last.update(logs)
                with record.path.open("a") as fh:
                    # seconds since this process began training: `bench-train --method sft` reads step times here
                    fh.write(json.dumps({"step": state.global_step, **logs,
                                         "elapsed_s": round(time.perf_counter() - record.t0, 3),
                                         **record.memory.step(state.global_step)}) + "\n")
                record.progress.update(record.task, completed=state.global_step, description=_bar_text(record.last))

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                record.progress.stop()
                if state.is_world_process_zero:
                    record.memory.end(state.global_step)

        return SFTRecordCallback()


def _sft_args(cfg: TrainConfig, run_dir: Path, use_gpu: bool, bf16: bool, has_dev: bool) -> Any:
    """SFTConfig from ours; for gkd, GKDConfig (an SFTConfig) with its own fields on top."""
    from trl import SFTConfig

    config_class, own = SFTConfig, {}
    if cfg.method == "gkd":
        from edgereason.train.gkd import gkd_settings, trl_gkd

        config_class, own = trl_gkd()[0], gkd_settings(cfg)

    same_name = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "adam_beta1",
                 "adam_beta2", "weight_decay", "max_grad_norm", "logging_steps", "save_steps", "save_total_limit", "seed")
    steps: dict[str, Any] = {"num_train_epochs": cfg.epochs, "max_steps": -1} if cfg.epochs else {"max_steps": cfg.max_steps}
    dev: dict[str, Any] = {"eval_strategy": "steps", "eval_steps": cfg.save_steps, "load_best_model_at_end": True,
           "metric_for_best_model": "eval_loss", "greater_is_better": False,
           "per_device_eval_batch_size": cfg.per_device_train_batch_size} if has_dev else {}
    return config_class(
        **{name: getattr(cfg, name) for name in same_name}, **steps, **dev, **own,
        output_dir=str(run_dir / "checkpoints"),
        # Padding-free takes the rows as they are (TRL refuses a max_length it cannot enforce there);
        # `_fits` has already left out every row longer than the limits.
        max_length=None if cfg.padding_free else cfg.max_prompt_length + cfg.max_completion_length,
        completion_only_loss=True,  # the prompt (system prompt, question) is context, not a target
        # The dev loss is all that is read from an evaluation: gathering its logits (rows x tokens x a
        # 49k vocabulary) took the 48-problem dev set's run to a 10.8 GB peak.
        prediction_loss_only=True,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler,
        activation_checkpointing=cfg.checkpoint_activations,  # transformers' current name for it
        # Exact on CPU too: transformers builds a per-sequence mask from the position ids when no KV
        # cache is in play, and SFTTrainer's forward passes use_cache=False. (With a cache, sdpa and
        # eager let each sequence attend to the ones before it: logits off by up to 20 here.)
        padding_free=cfg.padding_free,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=bf16, use_cpu=not use_gpu, save_strategy="steps", data_seed=cfg.seed,
        report_to=report_to(cfg), disable_tqdm=True, shuffle_dataset=True,
        model_init_kwargs=model_init_kwargs(cfg, bf16),
    )


def run_sft(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    """Supervised fine-tuning on checked rationales (or resume it); writes the adapter, run.json,
    metrics, a loss plot and the report."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    from edgereason.train.callbacks import ReturnFreedMemory
    from edgereason.train.precision import choose_bf16

    console = make_console(quiet=not show_progress)
    prep = prepare_run(cfg)
    train, dev, faults = split_rationales(cfg, prep.problems)
    run_dir = prep.run_dir
    start_run_dir(prep)
    if is_main_process():
        write_text_atomic(run_dir / "rationale-faults.txt", "".join(f + "\n" for f in faults))
    if faults:
        console.print(f"[yellow]{len(faults)} of {len(prep.problems)} problems left out[/] (a rationale that does not "
                      f"check out; each named in {run_dir / 'rationale-faults.txt'}), e.g. {escape(faults[0])}")
    hf_dir = prep.model.require_hf()
    record = _Record(run_dir, show_progress)
    record.memory.mark("libraries imported")
    tokenizer = load_tokenizer(prep)
    teacher = None
    if cfg.method == "gkd":
        from edgereason.train.gkd import teacher_checkpoint

        teacher = teacher_checkpoint(cfg, tokenizer)  # the vocabularies are compared before any training
    train_rows = _fits(_rows(train, tokenizer, prep.fmt, cfg), tokenizer, cfg)
    dev_rows = _fits(_rows(dev, tokenizer, prep.fmt, cfg), tokenizer, cfg)
    if not train_rows:
        raise TrainSetupError("no rationale fits max_prompt_length / max_completion_length")
    use_gpu = torch.cuda.is_available()
    bf16 = choose_bf16(cfg.bf16, use_gpu)
    console.print(f"{cfg.method.upper()} on {len(train_rows)} rationales (dev {len(dev_rows)}"
                  + (f"; teacher {cfg.teacher}" if teacher else "") + "); precision: "
                  f"{'bf16' if bf16[0] else 'fp32'} ({bf16[1]})")
    policy, peft_config = load_policy(cfg, hf_dir, bf16[0])
    trainer_kw = dict(model=policy, args=_sft_args(cfg, run_dir, use_gpu, bf16[0], bool(dev_rows)),
                      train_dataset=Dataset.from_list(train_rows),
                      eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
                      processing_class=tokenizer, peft_config=peft_config,
                      callbacks=[record.callback()] + ([ReturnFreedMemory()] if cfg.low_memory else []))
    if teacher is not None:
        from edgereason.train.gkd import gkd_trainer

        trainer = gkd_trainer(teacher, bf16[0], **trainer_kw)
    else:
        trainer = SFTTrainer(**trainer_kw)
    record.memory.mark("policy and trainer built")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    wire_reporting(trainer, run_dir, [])
    write_run_json(prep, "running", {"method": cfg.method})
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(prep.resume) if prep.resume else None)
    seconds = time.perf_counter() - t0
    return _finalize(prep, trainer, tokenizer, seconds, len(train_rows), len(dev_rows), faults, record.memory)


def _finalize(prep: Prepared, trainer: Any, tokenizer: Any, seconds: float, n_train: int, n_dev: int,
              faults: list[str], memory: MemoryLedger) -> RunResult:
    from edgereason.train.callbacks import read_metrics

    cfg, run_dir = prep.cfg, prep.run_dir
    adapter_dir = run_dir / ("model" if cfg.full_finetune else "adapter")
    in_sync = replicas_in_sync(trainer.model)
    if not is_main_process():
        save_on_other_ranks(trainer)
        return RunResult(run_dir, adapter_dir, trainer.state.global_step, "max_steps", {}, seconds)
    with atomic_output(adapter_dir) as tmp:  # the best checkpoint's weights when a dev loss chose one
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    rows = read_metrics(run_dir / "metrics.jsonl")
    state = trainer.state
    steps = state.global_step
    done_before = int(prep.resume.name.split("-")[-1]) if prep.resume else 0
    tokens = next((int(r["num_tokens"]) for r in reversed(rows) if "num_tokens" in r), 0)
    losses = [r["loss"] for r in rows if "loss" in r]
    dev_losses = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    metrics: dict[str, float] = {}
    if losses:
        metrics.update(first_loss=round(losses[0], 4), last_loss=round(losses[-1], 4))
    if dev_losses:
        best_step, best = min(dev_losses, key=lambda x: x[1])
        metrics.update(first_dev_loss=round(dev_losses[0][1], 4), best_dev_loss=round(best, 4), best_step=best_step)
    timing = {"wall_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(steps - done_before, 1), 2),
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "train_tokens_per_second": round(tokens / seconds, 1) if tokens and not prep.resume else None}
    extra = {"method": cfg.method, "steps": steps, "stop_reason": "max_steps", "final_metrics": metrics,
             "best_checkpoint": state.best_model_checkpoint, "rationales": {"train": n_train, "dev": n_dev,
                                                                            "faults": len(faults)},
             "replicas_in_sync": in_sync, "memory": memory.marks,
             "activation_checkpointing": recomputes_activations(trainer.model), **timing}
    write_run_json(prep, FINISHED, extra)
    _report(run_dir, cfg, rows, metrics, timing, state.best_model_checkpoint, len(faults), n_train, n_dev, memory)
    return RunResult(run_dir, adapter_dir, steps, "max_steps", metrics, seconds)


def _report(run_dir: Path, cfg: TrainConfig, rows: list[dict[str, Any]], metrics: dict[str, float],
            timing: dict[str, Any], best: str | None, faults: int, n_train: int, n_dev: int,
            memory: MemoryLedger) -> Path:
    from edgereason.plots import pyplot, save_figure

    plot = None
    if rows:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for key, label in (("loss", "train loss"), ("eval_loss", "dev loss")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (completion tokens)")
        ax.set_title(f"SFT {cfg.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        plot = save_figure(fig, run_dir / "metrics.png")
    lines = [f"# SFT run `{cfg.name}`", "",
             f"Base model `{cfg.model}`, data `{cfg.dataset}` ({n_train} checked rationales; {faults} left out, listed in "
             f"`rationale-faults.txt`; dev {n_dev}), format `{cfg.format}`, "
             f"{'full fine-tune' if cfg.full_finetune else f'LoRA r={cfg.lora_r}'}.",
             f"{timing['seconds_per_step']} s/step; peak RSS {timing['peak_rss_mb']:.0f} MB"
             + (f"; {timing['train_tokens_per_second']} training tokens/s." if timing.get("train_tokens_per_second") else "."),
             f"Adapter: the checkpoint with the lowest dev loss ({best})." if best else "Adapter: the last step.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += memory.report_lines()
    if plot:
        lines += ["", "![loss](metrics.png)"]
    lines += ["", f"Export it with `edgereason export gguf --adapter {run_dir / 'adapter'} --out exports/{cfg.name}`."]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
