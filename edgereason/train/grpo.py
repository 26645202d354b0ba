"""GRPO training on TRL's `GRPOTrainer` with a PEFT LoRA: validation, data, the trainer, outputs.

`run_training(cfg)` checks everything that can be checked before spending compute (model, data,
filters, batch shape, output folder), then trains, checkpointing every `save_steps`; the same
call after an interruption resumes from the last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereason.data import (
    Problem,
    dataset_hash,
    filter_by_level,
    filter_by_pass_rate,
    is_eval_only,
    load_benchmark,
    measure_pass_rates,
    sample_problems,
)
from edgereason.formats import ReasoningFormat, get_format
from edgereason.models import ResolvedModel, resolve_model
from edgereason.train.config import TrainConfig
from edgereason.versions import versions

FINISHED = "finished"


class TrainSetupError(ValueError):
    """A run that cannot start; raised before any model is loaded or step taken."""


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    stop_reason: str
    metrics: dict[str, float]
    seconds: float


# ---- checks before compute -------------------------------------------------------------------


def _config_key(cfg: TrainConfig) -> str:
    data = cfg.model_dump(mode="json", exclude={"overwrite", "max_steps"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_output_dir(cfg: TrainConfig) -> Path | None:
    """Decide what to do with runs/<name>: returns the checkpoint to resume from, or None to
    start fresh. Refuses to mix two runs, and never replaces a finished run unless `overwrite`."""
    run_dir = cfg.run_dir
    record = run_dir / "run.json"
    if record.exists() and json.loads(record.read_text()).get("status") == FINISHED:
        if not cfg.overwrite:
            raise TrainSetupError(
                f"{run_dir} holds a finished run; pass --overwrite to replace it or choose another --name"
            )
        shutil.rmtree(run_dir)
        return None
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    key_file = run_dir / "config.key"
    if not key_file.exists() or key_file.read_text().strip() != _config_key(cfg):
        if cfg.overwrite:
            shutil.rmtree(run_dir)
            return None
        raise TrainSetupError(
            f"{run_dir} holds another run (different configuration); choose another --name or pass --overwrite"
        )
    return latest_complete_checkpoint(run_dir / "checkpoints")


def _checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint is usable when its state, weights and optimizer were all fully written."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
        weights = [p for p in ckpt.glob("*.safetensors")]
        if not weights:
            return False
        from safetensors import safe_open

        for w in weights:
            with safe_open(str(w), "pt") as fh:
                list(fh.keys())
        opt = ckpt / "optimizer.pt"
        return opt.exists() and zipfile.is_zipfile(opt)
    except Exception:
        return False


def latest_complete_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill mid-save) are set aside, not deleted."""
    if not ckpt_root.is_dir():
        return None
    ckpts = sorted(
        (p for p in ckpt_root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in ckpts:
        if _checkpoint_complete(ckpt):
            return ckpt
        ckpt.rename(ckpt.with_name(f"incomplete-{ckpt.name}-{int(time.time())}"))
    return None


def load_training_problems(cfg: TrainConfig) -> list[Problem]:
    """The training problems after filters; refuses evaluation splits and empty results."""
    name = cfg.dataset
    if is_eval_only(name, cfg.data_dir):
        raise TrainSetupError(f"{name} is an evaluation split; train on gsm8k-train, logic-train or your own data")
    try:
        problems = load_benchmark(name, cfg.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise TrainSetupError(str(e)) from None
    if not problems:
        raise TrainSetupError(f"dataset {name!r} is empty")
    if cfg.levels:
        problems = filter_by_level(problems, cfg.levels)
        if not problems:
            raise TrainSetupError(f"level filter {cfg.levels} leaves no problems in {name!r} (does it have levels?)")
    if cfg.curriculum != "none" and any(p.level for p in problems):
        problems = _curriculum(cfg, filter_by_level(problems, [4, 5]), filter_by_level(problems, [1, 2, 3]))
    problems = sample_problems(problems, None, seed=cfg.seed)
    return problems


def _curriculum(cfg: TrainConfig, hard: list[Problem], easy: list[Problem]) -> list[Problem]:
    if not hard:
        raise TrainSetupError("the hard-only/mixed curriculum leaves no hard problems")
    if cfg.curriculum == "hard-only":
        return hard
    mixed: list[Problem] = []
    for i in range(max(len(hard), len(easy))):
        mixed.extend(p for p in (hard[i] if i < len(hard) else None, easy[i] if i < len(easy) else None) if p)
    return mixed


def check_setup(cfg: TrainConfig) -> tuple[ResolvedModel, list[Problem], Path | None]:
    """Everything that can fail cheaply, in one place, before any compute is spent."""
    try:
        model = resolve_model(cfg.model, need_hf=True)
        model.require_hf()
    except LookupError as e:
        raise TrainSetupError(str(e)) from None
    problems = load_training_problems(cfg)
    resume = check_output_dir(cfg)
    return model, problems, resume


# ---- data for TRL ----------------------------------------------------------------------------


def build_prompt(tokenizer, fmt: ReasoningFormat, question: str, prefill: bool) -> str:
    text = tokenizer.apply_chat_template(fmt.messages(question), add_generation_prompt=True, tokenize=False)
    return text + (fmt.prefill if prefill else "")


def _fit_prompts(problems: list[Problem], tokenizer, fmt: ReasoningFormat, cfg: TrainConfig) -> list[Problem]:
    """Drop problems whose prompt exceeds max_prompt_length (truncating would cut the instructions)."""
    kept = [
        p for p in problems
        if len(tokenizer(build_prompt(tokenizer, fmt, p.question, cfg.prefill), add_special_tokens=False)["input_ids"])
        <= cfg.max_prompt_length
    ]
    if not kept:
        raise TrainSetupError(f"every prompt is longer than max_prompt_length={cfg.max_prompt_length} tokens")
    return kept


def to_dataset(problems: list[Problem], tokenizer, fmt: ReasoningFormat, prefill: bool):
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": build_prompt(tokenizer, fmt, p.question, prefill), "answer": p.gold_answer, "id": p.id} for p in problems]
    )


# ---- the trainer -----------------------------------------------------------------------------


def _make_trainer_class():
    """GRPOTrainer plus per-generation temperatures (TRL samples a whole batch at one temperature)
    and the format's stop strings (generation ends at the closing answer tag, as at inference)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList, StopStringCriteria
    from trl import GRPOTrainer

    from edgereason.train.schedules import row_temperatures

    class RowTemperature(LogitsProcessor):
        """Divides each row's logits by its own temperature (rows = prompt × generation)."""

        def __init__(self, temperatures: torch.Tensor) -> None:
            self.t = temperatures

        def __call__(self, input_ids, scores):
            return scores / self.t.to(scores.device, scores.dtype).unsqueeze(1)

    class EdgeGRPOTrainer(GRPOTrainer):
        temperature_schedule: list[float] | None = None
        stop_strings: list[str] | None = None

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            if self.use_vllm:
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)
            extra: dict = {}
            if self.temperature_schedule:
                rows = len(prompt_ids)
                temps = row_temperatures(
                    self.temperature_schedule, self.num_generations, rows, self.accelerator.process_index * rows
                )
                extra["logits_processor"] = LogitsProcessorList([RowTemperature(torch.tensor(temps))])
            if self.stop_strings:
                extra["stopping_criteria"] = StoppingCriteriaList(
                    [StopStringCriteria(self.processing_class, self.stop_strings)]
                )
            base = self.accelerator.unwrap_model(self.model)
            base = base.get_base_model() if hasattr(base, "get_base_model") else base
            with extra_generate_kwargs(base, **extra):
                return super()._generate_single_turn(prompt_ids, *args, **kwargs)

    return EdgeGRPOTrainer


@contextlib.contextmanager
def extra_generate_kwargs(model, **extra):
    """Route extra logits processors / stopping criteria into every `model.generate` call inside
    the block. TRL calls generate with only a GenerationConfig, which cannot carry them; an instance
    attribute shadows the method for the duration and is removed afterwards."""
    if not extra:
        yield
        return
    original = model.generate

    def generate(*args, **kwargs):
        for key, items in extra.items():  # append to whatever the caller passed
            kwargs[key] = type(items)([*(kwargs.get(key) or []), *items])
        return original(*args, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate


# TrainConfig fields that GRPOConfig takes under the same name and meaning.
_SAME_NAME_ARGS = (
    "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
    "max_completion_length", "top_p", "loss_type", "epsilon", "epsilon_high", "beta", "scale_rewards",
    "learning_rate", "adam_beta1", "adam_beta2", "weight_decay", "max_grad_norm", "gradient_checkpointing",
    "logging_steps", "save_steps", "save_total_limit", "seed", "use_vllm", "vllm_mode", "vllm_server_base_url",
)


def _grpo_args(cfg: TrainConfig, run_dir: Path, use_gpu: bool):
    from trl import GRPOConfig

    from edgereason.train.rewards import REWARD_NAMES

    # With a per-row schedule, sampling runs at 1.0 and RowTemperature rescales each row; the loss
    # then scores tokens under the untempered policy, as the reference study does.
    temperature = 1.0 if cfg.temperature_schedule else cfg.temperature
    bf16 = cfg.bf16 if cfg.bf16 is not None else use_gpu
    return GRPOConfig(
        **{name: getattr(cfg, name) for name in _SAME_NAME_ARGS},
        output_dir=str(run_dir / "checkpoints"),
        temperature=temperature,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=cfg.lr_scheduler,
        bf16=bf16,
        use_cpu=not use_gpu,
        save_strategy="steps",
        data_seed=cfg.seed,
        report_to=[],
        log_completions=False,
        disable_tqdm=True,
        vllm_structured_outputs_regex=get_format(cfg.format).regex if cfg.vllm_structured_outputs else None,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        reward_weights=[cfg.reward_weights.get(n, 0.0) for n in REWARD_NAMES],
    )


def _dir_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("config.json")):
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_training(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    """Train (or resume) the run described by `cfg` and write adapter, run.json, report and plot."""
    model_info, problems, resume = check_setup(cfg)
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer, ProgressCallback, PrinterCallback

    from edgereason.train.callbacks import BatchStats, GRPOControlCallback, RunRecordCallback, read_metrics, summarise_metrics
    from edgereason.train.report import write_report
    from edgereason.train.rewards import CosineLengthParams, make_trl_rewards

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.key").write_text(_config_key(cfg))
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    fmt = get_format(cfg.format)
    hf_dir = model_info.require_hf()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if model_info.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = model_info.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.curriculum != "none" and not any(p.level for p in problems):
        problems = _curriculum(cfg, *measure_difficulty(cfg, problems))
    problems = _fit_prompts(problems, tokenizer, fmt, cfg)
    if cfg.max_samples:
        problems = problems[: cfg.max_samples]
    dataset = to_dataset(problems, tokenizer, fmt, cfg.prefill)

    use_gpu = torch.cuda.is_available()
    args = _grpo_args(cfg, run_dir, use_gpu)
    stats = BatchStats(fmt)
    rewards = make_trl_rewards(
        fmt,
        prefix=fmt.prefill if cfg.prefill else "",
        cosine=CosineLengthParams(
            cfg.cosine_min_correct,
            cfg.cosine_max_correct,
            cfg.cosine_min_wrong,
            cfg.cosine_max_wrong,
            cfg.cosine_max_length or cfg.max_completion_length,
        ),
        on_batch=stats,
    )
    ceiling = _reward_ceiling(cfg)
    control = GRPOControlCallback(cfg, ceiling)
    record = RunRecordCallback(run_dir, stats, cfg.sample_every, show_progress)
    peft_config = None
    if not cfg.full_finetune:
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        )
    Trainer = _make_trainer_class()
    trainer = Trainer(
        model=str(hf_dir),
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[control, record],
    )
    trainer.temperature_schedule = cfg.temperature_schedule
    trainer.stop_strings = fmt.stop_sequences() or None
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    control.trainer = trainer

    _write_run_json(cfg, run_dir, model_info, problems, status="running", resume=resume)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0

    adapter_dir = run_dir / ("model" if cfg.full_finetune else "adapter")
    tmp = run_dir / f".{adapter_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(tmp, adapter_dir)

    rows = read_metrics(run_dir / "metrics.jsonl")
    metrics = summarise_metrics(rows)
    steps = trainer.state.global_step
    stop_reason = control.stop_reason or ("max_steps" if steps >= cfg.max_steps else "stopped")
    timing = {
        "wall_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps - (int(resume.name.split("-")[-1]) if resume else 0), 1), 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    _write_run_json(
        cfg, run_dir, model_info, problems, status=FINISHED, resume=resume,
        extra={"steps": steps, "stop_reason": stop_reason, "final_metrics": metrics, **timing},
    )
    write_report(run_dir, cfg, rows, metrics, stop_reason, timing)
    return RunResult(run_dir, adapter_dir, steps, stop_reason, metrics, seconds)


def _reward_ceiling(cfg: TrainConfig) -> float:
    """Highest weighted total reward (for saturation detection)."""
    from edgereason.train.rewards import FORMAT_EXACT, PROCESS_ARITHMETIC_WEIGHT, PROCESS_STEPS_WEIGHT
    from edgereason.grading import EXACT_CREDIT

    best = {
        "format": FORMAT_EXACT,
        "process": PROCESS_ARITHMETIC_WEIGHT + PROCESS_STEPS_WEIGHT,
        "accuracy": EXACT_CREDIT,
        "correctness": 1.0,
        "cosine_length": cfg.cosine_max_correct,
    }
    return sum(w * best[k] for k, w in cfg.reward_weights.items())


def _write_run_json(cfg, run_dir, model_info, problems, status, resume, extra: dict[str, Any] | None = None):
    hf = model_info.hf_dir
    record = {
        "name": cfg.name,
        "status": status,
        "config": cfg.model_dump(mode="json"),
        "versions": versions("torch", "transformers", "trl", "peft", "accelerate", "edgereason", python=True),
        "base_model": {"name": model_info.name, "source": model_info.source, "hash": _dir_hash(hf) if hf else None},
        "data": {"dataset": cfg.dataset, "problems": len(problems), "hash": dataset_hash(problems)},
        "seed": cfg.seed,
        "resumed_from": str(resume) if resume else None,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        **(extra or {}),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, run_dir / "run.json")


def measure_difficulty(cfg: TrainConfig, problems: list[Problem]) -> tuple[list[Problem], list[Problem]]:
    """The curriculum pre-pass for data without levels: sample the base model `difficulty_samples`
    times per problem; (hard, easy) = solved at most / more than `hard_max_pass_rate` of the time."""
    from edgereason.backends.base import SamplingParams
    from edgereason.backends import create_backend

    fmt = get_format(cfg.format)
    pool = problems[: cfg.difficulty_pool]
    backend = create_backend("transformers", cfg.model)
    params = SamplingParams(
        max_tokens=cfg.max_completion_length, temperature=1.0, n=cfg.difficulty_samples,
        seed=cfg.seed, stop=fmt.stop_sequences(), prefix=fmt.prefill if cfg.prefill else "",
    )

    def sample(p: Problem, k: int) -> list[str]:
        return [c.text for c in backend.chat([fmt.messages(p.question)], params)[0]]

    rates = measure_pass_rates(pool, sample, cfg.difficulty_samples, fmt.name)
    backend.close()
    hard = filter_by_pass_rate(pool, rates, cfg.hard_max_pass_rate)
    easy = [p for p in pool if p not in hard]
    return hard, easy
