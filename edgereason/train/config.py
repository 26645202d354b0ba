"""`TrainConfig`: every setting of a training run (GRPO, or SFT on checked rationales), documented
field by field.

Defaults follow the GRPO studies (Open-RS; DeepSeek-R1's recipe scaled down) for the embedded 135M
model on a 2-core CPU: LoRA on all attention and MLP projections, a pass-rate curriculum, rollouts
from llama.cpp at per-generation temperatures, adaptive ε, AdamW β2=0.99, cosine LR with 10%
warm-up, gradient clipping 1.0. `edgereason train --help` lists every field as a flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgereason.config import StageConfig
from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import DEFAULT_MODEL
from edgereason.train.rewards import REWARD_NAMES

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"]


class TrainConfig(StageConfig):
    # ---- method ----
    method: Literal["grpo", "sft", "gkd", "distill", "rft"] = Field(
        "grpo", description="grpo: reinforcement learning from rewards (TRL GRPOTrainer); sft: supervised fine-tuning on "
        "checked worked solutions (TRL SFTTrainer; see edgereason.rationales), loss on the assistant turn only; "
        "distill: a teacher's traces, kept when correct and checked, then SFT on them; rft: the same with the model "
        "as its own teacher (rejection-sampling fine-tuning); gkd: logit-level distillation on the checked "
        "worked solutions from a teacher with the student's tokenizer (TRL GKDTrainer; see edgereason.train.gkd).")

    stages: list[Literal["sft", "grpo", "gkd", "distill", "rft"]] | None = Field(
        None, description="A hybrid in one command, e.g. sft then grpo: each stage a run under <name>/ (1-sft, 2-grpo), "
        "each continuing the previous stage's LoRA; <name>/adapter is the last stage's. Overrides per stage in "
        "stage_settings.")
    stage_settings: dict[str, dict[str, Any]] = Field(
        {}, description="Settings of one stage of a hybrid, e.g. {sft: {max_steps: 120, learning_rate: 5.0e-4}, "
        "grpo: {max_steps: 40}}: the rest of this config with these on top.")
    teacher: str | None = Field(None, description="distill: the teacher, any edgereason target: a GGUF, an export "
                                "folder, an HF folder, or an OpenAI-compatible URL http://host:port/v1#model (e.g. vLLM); "
                                "gkd: a model with Hugging Face weights and the student's tokenizer.")
    teacher_samples: int = Field(4, ge=1, le=64, description="distill/rft: traces asked per training problem.")
    teacher_temperature: float = Field(0.7, ge=0.0, le=2.0, description="distill/rft: the teacher's sampling temperature.")
    teacher_max_tokens: int = Field(256, ge=16, description="distill/rft: the longest trace the teacher may write.")
    teacher_problems: int | None = Field(None, ge=1, description="distill/rft: ask about the first N training problems "
                                         "only (default: all).")
    teacher_concurrency: int = Field(4, ge=1, description="distill/rft: problems asked at once.")
    teacher_grammar: bool = Field(True, description="distill/rft: sample the teacher under the format's grammar where "
                                  "its engine takes one (llama.cpp, a llama-server or vLLM URL), so a small teacher's "
                                  "traces are in format and only correctness decides (gemma3-270m unconstrained: 213 "
                                  "of 704 traces out of format).")
    teacher_threads: int | None = Field(None, ge=1, description="distill/rft: CPU threads of an in-process teacher.")
    gkd_beta: float = Field(0.5, ge=0.0, le=1.0, description="gkd: the generalized Jensen-Shannon divergence's "
                            "interpolation: 0 forward KL(teacher||student), 0.5 JSD, 1 reverse KL.")
    gkd_lmbda: float = Field(0.0, ge=0.0, le=1.0, description="gkd: share of batches on which the student writes its own "
                             "completion (on-policy, HF generate: slow on CPU); 0 distils on the checked rationales only.")
    init_adapter: Path | None = Field(None, description="Start from this saved PEFT LoRA (an earlier stage's adapter) "
                                      "and keep training it; its rank, alpha and modules are used.")

    # ---- run ----
    name: str = Field("grpo-smollm2", description="Run name: outputs go to <output_root>/<name>/.")
    output_root: Path = Field(Path("runs"), description="Folder holding all runs.")
    overwrite: bool = Field(False, description="Replace a finished run of the same name (never implicit).")
    seed: int = Field(42, description="Seed for data order, sampling and LoRA init.")

    # ---- model ----
    model: str = Field(DEFAULT_MODEL, description="Base model: embedded name, HF directory, GGUF file or hub id.")
    full_finetune: bool = Field(False, description="Train all parameters instead of a LoRA adapter.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get LoRA weights (default: all attention and MLP projections).",
    )

    # ---- data ----
    dataset: list[str] = Field(["gsm8k-train"], description="Training data (repeatable): gsm8k-train, arith-train, "
                               "logic-train, a MATH-style file, or any data file.")
    dataset_weights: list[float] | None = Field(None, description="Share of each dataset in the training pool; "
                                                "the dataset that runs out first sets the pool's size "
                                                "(default: every problem of every dataset).")
    data_dir: Path | None = Field(None, description="Data folder (default ../shared/data).")
    max_samples: int | None = Field(None, ge=1, description="Use at most this many problems (after filtering).")
    levels: list[int] | None = Field(None, description="Keep only these MATH levels (e.g. [4, 5]).")
    curriculum: Literal["none", "pass-rate", "hard-only", "mixed"] = Field(
        "none",
        description="pass-rate: train on problems the model solves in some but not all of curriculum_samples samples, "
        "measured with the model and re-measured as training moves; hard-only / mixed: MATH levels 4-5 only, or "
        "hard and easy alternated (data with levels).",
    )
    curriculum_samples: int = Field(4, ge=2, description="Samples per problem when measuring pass rates.")
    curriculum_pool: int = Field(256, ge=1, description="Candidates measured before training starts.")
    curriculum_band: tuple[float, float] = Field((0.0, 1.0), description="Keep problems with low < pass rate < high.")
    curriculum_refresh_steps: int = Field(50, ge=0, description="Re-measure parked, retired and new problems every N "
                                          "steps with the current adapter (0 = only from the rollouts themselves).")
    curriculum_refresh_size: int = Field(32, ge=1, description="Problems measured at each refresh.")
    curriculum_temperature: float = Field(0.8, gt=0, description="Sampling temperature of the measurements.")
    curriculum_sampling: Literal["uniform", "balanced"] = Field(
        "uniform", description="uniform: any active problem; balanced: each draw picks a level uniformly, then a "
        "problem weighted by rate*(1-rate) (meant for fewer tied groups and no level crowding out the others; "
        "runs expC/expE used it and did not beat uniform expB).")
    format: str = Field(DEFAULT_FORMAT, description="Reasoning format preset the model is trained for.")
    prefill: bool = Field(True, description="End prompts with the format's open tag (R1-style prefill).")

    # ---- SFT ----
    calculator: Literal["strip", "keep"] = Field("strip", description="GSM8K-style calculator annotations "
                                                 "(<<48/2=24>>) in rationales: strip them or keep them (sft).")
    dev: str | None = Field("holdout", description="Data for the loss evaluated during training (sft): holdout (the "
                            "last dev_size training rationales, then left out of training), a dev split such as "
                            "arith-dev, or a file; the checkpoint with the lowest dev loss is the run's adapter. "
                            "None: no dev loss, the last checkpoint.")
    dev_size: int = Field(64, ge=1, description="Dev problems evaluated at each checkpoint (sft).")
    epochs: float | None = Field(None, gt=0, description="Passes over the rationales (sft); overrides max_steps when set.")
    padding_free: bool = Field(False, description="SFT: each batch one row, its sequences back to back with no padding "
                               "(TRL's padding-free collator; each sequence attends only to itself, checked in the "
                               "tests). Not with gkd, whose collator is its own.")
    group_by_length: bool = Field(False, description="SFT: batches of rationales of similar length, so less padding "
                                  "(transformers' length-grouped sampler; the order is less random).")

    # ---- rewards ----
    reward_weights: dict[str, float] = Field(
        {"format": 0.2, "process": 0.3, "accuracy": 0.5, "correctness": 0.0, "cosine_length": 0.0},
        description="Weight of each reward component; all are computed and logged, weights make the total.",
    )
    cosine_min_correct: float = Field(0.5, description="Cosine length reward: correct answer at max length.")
    cosine_max_correct: float = Field(1.0, description="Cosine length reward: correct answer at length 0.")
    cosine_min_wrong: float = Field(-1.0, description="Cosine length reward: wrong answer at length 0.")
    cosine_max_wrong: float = Field(-0.5, description="Cosine length reward: wrong answer at max length.")
    cosine_max_length: int | None = Field(None, description="Cosine length horizon in tokens (default max_completion_length).")

    # ---- GRPO ----
    max_steps: int = Field(40, ge=1, description="Optimizer steps.")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Completions per device per step; divisible by num_generations.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    temperature_schedule: list[float] | None = Field(
        [0.6, 0.8, 1.0, 1.2],
        description="Per-generation temperatures within a group (cycled); None samples all at `temperature`.",
    )
    temperature: float = Field(1.0, gt=0, description="Sampling temperature when no schedule is set.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_prompt_length: int = Field(320, ge=16, description="Problems whose prompt is longer are left out.")
    max_completion_length: int = Field(160, ge=8, description="Maximum generated tokens per completion.")
    loss_type: LossType = Field("dr_grpo", description="TRL loss aggregation (grpo, dr_grpo, dapo, bnpo, cispo, sapo).")
    epsilon: float = Field(0.2, gt=0, description="Clipping ε0 (initial).")
    epsilon_high: float | None = Field(None, description="Upper clip (DAPO clip-higher); default = epsilon.")
    adaptive_epsilon: bool = Field(True, description="ε(t) = ε0·exp(−t/τ) + ε_min.")
    epsilon_tau: float = Field(100.0, description="τ of the adaptive clip schedule, in steps.")
    epsilon_min: float = Field(0.05, ge=0, description="ε_min of the adaptive clip schedule.")
    beta: float = Field(0.04, ge=0, description="KL coefficient β (0 disables the reference model entirely).")
    adaptive_kl: bool = Field(True, description="×1.5 β above 2× target KL, ÷1.5 below 0.5× target.")
    kl_target: float = Field(0.01, gt=0, description="Target KL for the adaptive controller.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Advantage normalisation.")

    # ---- optimisation ----
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA-scale).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of steps.")
    lr_scheduler: str = Field("cosine", description="LR schedule after warm-up.")
    adam_beta1: float = Field(0.9, description="AdamW β1.")
    adam_beta2: float = Field(0.99, description="AdamW β2.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each layer's activations in the backward pass instead of keeping them: compute "
        "for memory (default: on with low_memory, else off; see checkpoint_activations).")
    bf16: bool | None = Field(None, description="bf16 autocast for the policy's forward and backward (default: on with a "
                              "GPU or a CPU with bf16 instructions; requested on a CPU without them, fp32 with a warning).")
    threads: int | None = Field(None, ge=1, description="CPU threads for training and rollouts (default: all cores).")
    low_memory: bool = Field(False, description="The least memory on a small device, at a cost in speed: activations "
                             "recomputed (gradient_checkpointing, unless set), the LM head's logits made in small "
                             "tiles, large allocations mapped and returned at once, freed heap pages handed back "
                             "after every step, and oneDNN's kernel cache capped (see edgereason.train.memory "
                             "and edgereason.train.lm_head).")
    compact_scoring: bool = Field(True, description="GRPO and SFT: score only completion positions in TRL's fused LM "
                                  "head off-GPU too (TRL scores every position there; the prompt is most of each row).")

    # ---- run management ----
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps (resume picks the last complete one).")
    save_total_limit: int = Field(3, ge=1, description="Checkpoints kept.")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    sample_every: int = Field(5, ge=1, description="Log a sample of completions every N steps.")
    report_to: list[Literal["tensorboard", "trackio", "wandb"]] = Field(
        [], description="Experiment trackers each step's metrics also go to (TRL's report_to; none by default): "
        "tensorboard (event files in <run>/tensorboard), trackio, wandb. The reward components, curriculum, "
        "schedule (beta, epsilon) and dev loss are in the same stream.")
    early_stop: bool = Field(True, description="Stop when reward saturates or the gradient norm collapses.")
    early_stop_patience: int = Field(5, ge=1, description="Consecutive steps needed to trigger early stop.")
    early_stop_fraction: float = Field(0.95, gt=0, le=1, description="Saturation = mean reward >= this share of its ceiling.")

    # ---- rollouts ----
    rollout_engine: Literal["auto", "llama.cpp", "transformers", "trl"] = Field(
        "auto", description="Who samples the completions: llama.cpp (in process, the policy's LoRA hot-swapped each step, "
        "importance-sampling correction), transformers (the policy itself), trl (TRL's own generation, one temperature; "
        "the speed benchmark's anchor). auto: vLLM when use_vllm, else llama.cpp for architectures it can take.")
    importance_sampling_mode: Literal["sequence_mask", "sequence_truncate", "token_mask", "token_truncate"] = Field(
        "sequence_mask", description="How the engine/policy mismatch is corrected (TRL's vllm_importance_sampling_mode). "
        "With llama.cpp rollouts on a quantized GGUF prefer token_truncate: a sequence's ratio multiplies its tokens' "
        "~0.05-nat mismatches, measured to weight completions by 0.05-3 (runs expF-expH).")
    importance_sampling_clip_max: float = Field(3.0, gt=1, description="Cap of the importance ratio (TRL's clip_max).")

    # ---- scale-out ----
    use_vllm: bool = Field(False, description="Generate with vLLM (GPU): TRL's colocate or server mode.")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="vLLM generation mode.")
    vllm_server_base_url: str | None = Field(None, description="URL of a `trl vllm-serve` server (server mode).")
    vllm_structured_outputs: bool = Field(False, description="Constrain vLLM sampling to the format's regex.")

    @field_validator("dataset", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.dataset_weights is not None:
            if len(self.dataset_weights) != len(self.dataset):
                raise ValueError(f"dataset_weights has {len(self.dataset_weights)} entries for {len(self.dataset)} datasets")
            if min(self.dataset_weights) < 0 or max(self.dataset_weights) <= 0:
                raise ValueError(f"dataset_weights must be >= 0 with one above 0, got {self.dataset_weights}")
        low, high = self.curriculum_band
        if not 0 <= low < high <= 1:
            raise ValueError(f"curriculum_band must satisfy 0 <= low < high <= 1, got {self.curriculum_band}")
        if self.rollout_engine == "llama.cpp" and self.use_vllm:
            raise ValueError("rollout_engine llama.cpp and use_vllm exclude each other")
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.method == "grpo" and per_step % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size × gradient_accumulation_steps ({per_step}) must be divisible by "
                f"num_generations ({self.num_generations})"
            )
        if self.method == "gkd" and self.padding_free:
            raise ValueError("padding_free is SFT's collator; gkd brings its own: leave padding_free off")
        if self.method == "gkd" and not self.teacher:
            raise ValueError("method gkd needs a teacher with the student's tokenizer: an HF folder or a model name")
        if self.method == "distill" and not self.teacher:
            raise ValueError("method distill needs a teacher: a GGUF, an export folder, an HF folder or a URL "
                             "http://host:port/v1#model")
        if self.init_adapter is not None and self.full_finetune:
            raise ValueError("init_adapter continues a LoRA; full_finetune trains every weight: choose one")
        if self.stages is not None:
            if not self.stages:
                raise ValueError("stages is empty: name the methods to run in order, e.g. [sft, grpo]")
            extra = set(self.stage_settings) - set(self.stages)
            if extra:
                raise ValueError(f"stage_settings for {sorted(extra)}, which is not among stages {self.stages}")
            for method in self.stages:  # each stage's settings are checked now, not when its turn comes
                TrainConfig.model_validate({**self.model_dump(exclude={"stages", "stage_settings"}),
                                            **self.stage_settings.get(method, {}), "method": method})
        unknown = set(self.reward_weights) - set(REWARD_NAMES)
        if unknown:
            raise ValueError(f"unknown reward components {sorted(unknown)}")
        if not any(self.reward_weights.values()):
            raise ValueError("all reward weights are 0: nothing to learn from")
        return self

    @property
    def checkpoint_activations(self) -> bool:
        """Whether the backward recomputes activations: the setting where given, else `low_memory`. Without it
        a step holds every layer's activations for the row it trains on: a ~480 MB swing above the resident
        level per GRPO micro-batch of the CPU recipe, ~100 MB with it (docs/measurements.md)."""
        return self.low_memory if self.gradient_checkpointing is None else self.gradient_checkpointing

    @property
    def run_dir(self) -> Path:
        return self.output_root / self.name
