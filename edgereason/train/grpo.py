"""GRPO training on TRL with a PEFT LoRA, in three parts:

- `prepare_run(cfg)` (train/runs.py, shared with SFT): everything that can fail cheaply, before any
  compute (model, data, filters, output folder, resume point);
- `build_trainer(prep)`: the tokenizer, the curriculum pool, the rewards, the rollout engine, the
  controls and `EdgeGRPOTrainer`;
- `finalize_run(...)`: the adapter (written atomically), run.json, the report and plots.

`run_training(cfg)` runs the three; the same call after an interruption resumes from the last
complete checkpoint, curriculum state included.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgereason.console import make_console, make_progress
from edgereason.cpu import default_threads
from edgereason.data import dataset_hash
from edgereason.files import atomic_output, content_key, write_text_atomic
from edgereason.formats import ReasoningFormat, get_format
from edgereason.problems import Problem
from edgereason.train.config import TrainConfig
from edgereason.train.curriculum import training_row
from edgereason.train.lora_gguf import rollout_base_gguf
from edgereason.train.memory import MemoryLedger, peak_rss_mb
from edgereason.train.rewards import CosineLengthParams, reward_ceiling
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

# ---- building the trainer --------------------------------------------------------------------


def _fit_prompts(problems: list[Problem], tokenizer: Any, fmt: ReasoningFormat, cfg: TrainConfig) -> list[Problem]:
    """Drop problems whose prompt exceeds max_prompt_length (truncating would cut the instructions)."""
    kept = [
        p for p in problems
        if len(tokenizer(build_prompt(tokenizer, fmt, p.question, cfg.prefill), add_special_tokens=False)["input_ids"])
        <= cfg.max_prompt_length
    ]
    if not kept:
        raise TrainSetupError(f"every prompt is longer than max_prompt_length={cfg.max_prompt_length} tokens")
    return kept


def choose_engine(cfg: TrainConfig, model_config: Any) -> str:
    if cfg.rollout_engine != "auto":
        return cfg.rollout_engine
    if cfg.use_vllm:
        return "trl"
    from edgereason.gguf_layout import SUPPORTED

    if not cfg.full_finetune and getattr(model_config, "model_type", None) in SUPPORTED:
        return "llama.cpp"
    return "transformers"


@dataclass
class Built:
    trainer: Any
    engine: Any
    tokenizer: Any
    pool: Any = None
    engine_name: str = ""
    bf16: tuple[bool, str] = (False, "")
    extra: dict[str, Any] = field(default_factory=dict)
    memory: MemoryLedger = field(default_factory=MemoryLedger)


def _grpo_args(cfg: TrainConfig, run_dir: Path, use_gpu: bool, bf16: bool, engine: str, streamed: bool) -> Any:
    from trl import GRPOConfig

    from edgereason.train.rewards import REWARD_NAMES

    same_name = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                 "max_completion_length", "top_p", "loss_type", "epsilon", "epsilon_high", "beta", "scale_rewards",
                 "learning_rate", "adam_beta1", "adam_beta2", "weight_decay", "max_grad_norm",
                 "logging_steps", "save_steps", "save_total_limit", "seed", "use_vllm", "vllm_mode", "vllm_server_base_url")
    # With a per-generation schedule the engine applies each row's temperature; the loss then scores
    # tokens under the untempered policy (temperature 1), as the GRPO studies' recipes do.
    scheduled = bool(cfg.temperature_schedule) and engine in ("llama.cpp", "transformers")
    return GRPOConfig(
        **{name: getattr(cfg, name) for name in same_name},
        output_dir=str(run_dir / "checkpoints"),
        activation_checkpointing=cfg.checkpoint_activations,  # transformers' current name for it
        temperature=1.0 if scheduled else cfg.temperature,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=cfg.lr_scheduler,
        bf16=bf16,
        use_cpu=not use_gpu,
        save_strategy="steps",
        data_seed=cfg.seed,
        report_to=report_to(cfg),
        log_completions=False,
        disable_tqdm=True,
        shuffle_dataset=not streamed,
        vllm_structured_outputs_regex=get_format(cfg.format).regex if cfg.vllm_structured_outputs else None,
        vllm_importance_sampling_mode=cfg.importance_sampling_mode,
        vllm_importance_sampling_clip_max=cfg.importance_sampling_clip_max,
        # bf16 keeps the frozen base in bf16 (half the memory, no per-forward casts); PEFT keeps the LoRA
        # weights it trains in fp32 (autocast_adapter_dtype), and autocast runs the matmuls in bf16.
        model_init_kwargs=model_init_kwargs(cfg, bf16),
        reward_weights=[cfg.reward_weights.get(n, 0.0) for n in REWARD_NAMES],
        torch_empty_cache_steps=None,
    )


def build_trainer(prep: Prepared, show_progress: bool = True, log: Any = print) -> Built:
    """The trainer and everything it runs with (see the module doc)."""
    import torch
    from datasets import Dataset, IterableDataset
    from transformers import AutoConfig, PrinterCallback, ProgressCallback

    from edgereason.train.callbacks import (
        BatchStats,
        CurriculumCallback,
        GRPOControlCallback,
        ReturnFreedMemory,
        RunRecordCallback,
    )
    from edgereason.train.precision import choose_bf16
    from edgereason.train.rewards import make_trl_rewards
    from edgereason.train.trainer import EdgeGRPOTrainer

    cfg, fmt, run_dir = prep.cfg, prep.fmt, prep.run_dir
    memory = MemoryLedger()
    memory.mark("libraries imported")
    hf_dir = prep.model.require_hf()
    tokenizer = load_tokenizer(prep)
    model_config = AutoConfig.from_pretrained(hf_dir)
    use_gpu = torch.cuda.is_available()
    bf16 = choose_bf16(cfg.bf16, use_gpu)
    engine_name = choose_engine(cfg, model_config)
    log(f"rollouts: {engine_name}; precision: {'bf16' if bf16[0] else 'fp32'} ({bf16[1]})")

    problems = _fit_prompts(prep.problems, tokenizer, fmt, cfg)
    if cfg.max_samples:
        problems = problems[: cfg.max_samples]
    stop = fmt.stop_sequences()
    engine = _make_engine(engine_name, cfg, prep, tokenizer, model_config, stop, run_dir)
    memory.mark(f"rollout engine ({engine_name})")

    def render(p: Problem) -> str:
        return build_prompt(tokenizer, fmt, p.question, cfg.prefill)

    pool = None
    if cfg.curriculum == "pass-rate":
        pool = _build_pool(cfg, prep, problems, render, engine, tokenizer, model_config, log, show_progress)
        dataset = IterableDataset.from_generator(pool.stream)
        memory.mark("curriculum pass rates")
    else:
        dataset = Dataset.from_list([training_row(p, render) for p in problems])

    args = _grpo_args(cfg, run_dir, use_gpu, bf16[0], engine_name, streamed=pool is not None)
    stats = BatchStats(fmt)
    rewards = make_trl_rewards(
        fmt, prefix=fmt.prefill if cfg.prefill else "",
        cosine=_cosine_params(cfg), on_batch=stats,
    )
    control = GRPOControlCallback(cfg, _reward_ceiling(cfg))
    callbacks: list[Any] = [control]
    if pool is not None:  # before the run record, so its figures are in each logged step
        callbacks.append(CurriculumCallback(pool, stats, cfg, run_dir, _refresher(cfg, prep, engine, tokenizer, render)))
    callbacks.append(RunRecordCallback(run_dir, stats, cfg.sample_every, show_progress, memory))
    if cfg.low_memory:
        callbacks.append(ReturnFreedMemory())
    policy, peft_config = load_policy(cfg, hf_dir, bf16[0])
    trainer = EdgeGRPOTrainer(
        model=policy, reward_funcs=rewards, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=callbacks,
        rollout_engine=engine if engine_name in ("llama.cpp", "transformers") else None,
    )
    memory.mark("policy and trainer built")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    control.trainer = trainer
    wire_reporting(trainer, run_dir, callbacks)
    return Built(trainer, engine, tokenizer, pool, engine_name, bf16, memory=memory)


def _make_engine(name: str, cfg: TrainConfig, prep: Prepared, tokenizer: Any, model_config: Any, stop: list[str],
                 run_dir: Path) -> Any:
    schedule = cfg.temperature_schedule
    if name == "llama.cpp":
        from edgereason.gguf_layout import LoraLayout
        from edgereason.train.rollouts import LlamaCppRollouts

        rows = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        return LlamaCppRollouts(
            rollout_base_gguf(prep.model, run_dir / "logs"), tokenizer, LoraLayout.from_hf_config(model_config),
            cfg.lora_alpha, cfg.num_generations, cfg.max_completion_length, stop, schedule, cfg.temperature, cfg.top_p,
            cfg.seed, threads=cfg.threads, max_seqs=max(16, min(rows, 64)), max_prompt_tokens=cfg.max_prompt_length)
    if name == "transformers":
        from edgereason.train.rollouts import TransformersRollouts

        return TransformersRollouts(tokenizer, cfg.num_generations, cfg.max_completion_length, stop, schedule,
                                    cfg.temperature, cfg.top_p, cfg.seed)
    return None


def _sampler(cfg: TrainConfig, prep: Prepared, decoder: Any, tokenizer: Any, render: Any, seed: int,
             show_progress: bool = False) -> Any:
    """problems, k -> k sampled completions each (prefill included), decoded together by llama.cpp."""
    fmt = prep.fmt
    prefix = fmt.prefill if cfg.prefill else ""

    def sample(problems: list[Problem], k: int) -> list[list[str]]:
        # several slots' worth of problems per call: the decoder admits the next problem's k rows as
        # soon as a problem finishes (continuous batching), so a call's long answers hold back nothing
        per_call = max(1, 4 * decoder.max_seqs // k)
        out: list[list[str]] = []
        progress = make_progress("pass rates", disable=not show_progress, transient=True)
        task = progress.add_task("", total=len(problems))
        progress.start()
        for start in range(0, len(problems), per_call):
            chunk = problems[start:start + per_call]
            ids = [tokenizer(render(p), add_special_tokens=False)["input_ids"] for p in chunk for _ in range(k)]
            seeds = [seed + start * k + i for i in range(len(ids))]
            samples, _ = decoder.generate_batch(ids, [cfg.curriculum_temperature] * len(ids), seeds,
                                                cfg.max_completion_length, cfg.top_p, fmt.stop_sequences())
            texts = [prefix + tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
            out += [texts[i * k:(i + 1) * k] for i in range(len(chunk))]
            progress.advance(task, len(chunk))
        progress.stop()
        return out

    return sample


def _build_pool(cfg: TrainConfig, prep: Prepared, problems: list[Problem], render: Any, engine: Any,
                tokenizer: Any, model_config: Any, log: Any, show_progress: bool = True) -> Any:
    """The curriculum pool: restored on resume, else the first `curriculum_pool` problems measured
    (with the rollout engine's decoder, or llama.cpp on the base when the engine has none)."""
    from edgereason.train.curriculum import CurriculumPool, measure

    low, high = cfg.curriculum_band
    pool = CurriculumPool({p.id: p for p in problems}, render, low=low, high=high, seed=cfg.seed,
                          balanced=cfg.curriculum_sampling == "balanced")
    if pool.restore(prep.run_dir / "curriculum.json"):  # a resumed run continues with its curriculum as it was
        log(f"curriculum restored: {pool.sizes()}")
        return pool
    candidates = problems[: cfg.curriculum_pool]
    pool.unmeasured = [p.id for p in problems[cfg.curriculum_pool:]]
    decoder = getattr(engine, "decoder", None)
    owned = None
    if decoder is None:
        from llama_cpp import Llama

        from edgereason.backends.llamacpp_parallel import ParallelDecoder

        owned = Llama(model_path=str(rollout_base_gguf(prep.model, prep.run_dir / "logs")), n_ctx=256,
                      n_threads=default_threads(cfg.threads), verbose=False)
        decoder = ParallelDecoder(owned, 16, 16 * (cfg.max_prompt_length + cfg.max_completion_length),
                                  default_threads(cfg.threads))
    adapter_key = None
    if cfg.init_adapter is not None:  # the band is measured on the model this stage continues, not the base
        from edgereason.gguf_layout import LoraLayout
        from edgereason.train.lora_gguf import saved_lora_gguf

        layout = LoraLayout.from_hf_config(model_config)
        decoder.set_lora(saved_lora_gguf(cfg.init_adapter, layout, prep.run_dir / "logs" / "init-adapter-lora.gguf"))
        adapter_key = content_key(cfg.init_adapter)
    t0 = time.perf_counter()
    from edgereason.paths import cache_dir

    key = pass_rate_key(cfg, [prep.model.name, content_key(prep.model.require_hf()), adapter_key], candidates)
    cached = cache_dir() / "pass-rates" / f"{key}.json"
    if cached.is_file():
        rates = json.loads(cached.read_text())
        log(f"pass rates of {len(rates)} problems from {cached}")
    else:
        log(f"measuring pass rates: {len(candidates)} problems x {cfg.curriculum_samples} samples")
        rates = measure(candidates, _sampler(cfg, prep, decoder, tokenizer, render, cfg.seed, show_progress),
                        cfg.curriculum_samples, prep.fmt)
        write_text_atomic(cached, json.dumps(rates))
    if owned is not None:
        decoder.close()
        owned.close()
    pool.apply(rates, samples=cfg.curriculum_samples)
    pool.history.append({"step": 0, "measured": len(rates), "seconds": round(time.perf_counter() - t0, 1),
                         "init_adapter": adapter_key, **pool.sizes()})
    log(f"curriculum: {pool.sizes()} after {time.perf_counter() - t0:.0f} s (band {low} < pass rate < {high})")
    if not pool.active:
        log("[yellow]no measured problem is in the band: training on the others until a refresh finds some[/]")
    return pool


def pass_rate_key(cfg: TrainConfig, model: list[str | None], problems: list[Problem]) -> str:
    """The cache key of a pass-rate measurement. The starting model's pass rates (the base, or the base
    with the adapter a stage continues) do not depend on the run, so they are cached by model, adapter,
    problems and sampling settings, and a second run (or a re-run) starts at once. The problems count
    by content, not id: an id may name another question once a split is regenerated (logic-train's
    were, to leave out the test set's)."""
    return hashlib.sha256(json.dumps([*model, dataset_hash(problems), cfg.curriculum_samples,
                                      cfg.curriculum_temperature, cfg.max_completion_length, cfg.top_p, cfg.seed,
                                      cfg.format, cfg.prefill]).encode()).hexdigest()[:20]


def _refresher(cfg: TrainConfig, prep: Prepared, engine: Any, tokenizer: Any, render: Any) -> Any:
    """Re-measure a sample of the pool with the current adapter (engines with a llama.cpp decoder)."""
    if cfg.curriculum_refresh_steps == 0 or getattr(engine, "decoder", None) is None:
        return None
    from edgereason.train.curriculum import measure

    def refresh(problems: list[Problem], step: int) -> dict[str, float]:
        engine.sync_weights()
        return measure(problems, _sampler(cfg, prep, engine.decoder, tokenizer, render, cfg.seed + 7 * step),
                       cfg.curriculum_samples, prep.fmt)

    return refresh


# ---- finishing -------------------------------------------------------------------------------


def _cosine_params(cfg: TrainConfig) -> CosineLengthParams:
    return CosineLengthParams(cfg.cosine_min_correct, cfg.cosine_max_correct, cfg.cosine_min_wrong,
                              cfg.cosine_max_wrong, cfg.cosine_max_length or cfg.max_completion_length)


def _reward_ceiling(cfg: TrainConfig) -> float:
    """Highest weighted total reward (for saturation detection), from the reward registry's ranges."""
    return reward_ceiling(cfg.reward_weights, _cosine_params(cfg))


def finalize_run(prep: Prepared, built: Built, seconds: float, stop_reason: str | None) -> RunResult:
    from edgereason.train.callbacks import read_metrics, summarise_metrics
    from edgereason.train.report import write_report

    cfg, run_dir, trainer = prep.cfg, prep.run_dir, built.trainer
    adapter_dir = run_dir / ("model" if cfg.full_finetune else "adapter")
    in_sync = replicas_in_sync(trainer.model)
    steps = trainer.state.global_step
    if not is_main_process():
        save_on_other_ranks(trainer)
        return RunResult(run_dir, adapter_dir, steps, stop_reason or "max_steps", {}, seconds)
    with atomic_output(adapter_dir) as tmp:
        trainer.save_model(str(tmp))
        built.tokenizer.save_pretrained(str(tmp))
    rows = read_metrics(run_dir / "metrics.jsonl")
    metrics = summarise_metrics(rows)
    steps = trainer.state.global_step
    reason = stop_reason or ("max_steps" if steps >= cfg.max_steps else "stopped")
    done_before = int(prep.resume.name.split("-")[-1]) if prep.resume else 0
    timing = {
        "wall_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps - done_before, 1), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    extra: dict[str, Any] = {"steps": steps, "stop_reason": reason, "final_metrics": metrics,
                             "rollout_engine": built.engine_name, "bf16": built.bf16[0], "precision_note": built.bf16[1],
                             "replicas_in_sync": in_sync, "memory": built.memory.marks,
                             "activation_checkpointing": recomputes_activations(trainer.model), **timing}
    if built.pool is not None:
        extra["curriculum"] = built.pool.sizes()
    write_run_json(prep, FINISHED, extra)
    write_report(run_dir, cfg, rows, metrics, reason, timing, built.memory)
    return RunResult(run_dir, adapter_dir, steps, reason, metrics, seconds)


def run_training(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    """Train (or resume) the run described by `cfg` and write adapter, run.json, report and plot."""
    prep = prepare_run(cfg)
    console = make_console(quiet=not show_progress)
    start_run_dir(prep)
    built = build_trainer(prep, show_progress, log=console.print)
    write_run_json(prep, "running")
    t0 = time.perf_counter()
    try:
        built.trainer.train(resume_from_checkpoint=str(prep.resume) if prep.resume else None)
    finally:
        if built.engine is not None:
            built.engine.close()
    control = next(c for c in built.trainer.callback_handler.callbacks if hasattr(c, "stop_reason"))
    return finalize_run(prep, built, time.perf_counter() - t0, control.stop_reason)
