"""What every training method shares: the run folder and its guard against mixing runs, complete
checkpoints and resume, the training data (evaluation splits refused), the prompt as every stage
builds it, and run.json. GRPO (`grpo.py`) and SFT (`sft.py`) are each a file on top.

`prepare_run(cfg)` does everything that can fail cheaply, before any compute: data, model, output
folder, resume point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereason.cpu import set_torch_threads
from edgereason.data import dataset_hash, filter_by_level, is_eval_only, load_benchmark, sample_problems
from edgereason.files import content_key, write_text_atomic
from edgereason.formats import ReasoningFormat, get_format
from edgereason.models import ResolvedModel, resolve_model
from edgereason.problems import Problem
from edgereason.train.config import TrainConfig
from edgereason.train.lm_head import score_completions_only, small_tiles
from edgereason.train.memory import limit_memory_growth
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


@dataclass
class Prepared:
    cfg: TrainConfig
    model: ResolvedModel
    problems: list[Problem]
    resume: Path | None
    fmt: ReasoningFormat

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir


# ---- checks before compute -------------------------------------------------------------------


def config_key(cfg: TrainConfig) -> str:
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
    if not key_file.exists() or key_file.read_text().strip() != config_key(cfg):
        if cfg.overwrite:
            shutil.rmtree(run_dir)
            return None
        raise TrainSetupError(
            f"{run_dir} holds another run (different configuration); choose another --name or pass --overwrite"
        )
    return latest_complete_checkpoint(run_dir / "checkpoints")


def checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint is usable when its state, weights and optimizer were all fully written.

    False only on evidence of an incomplete write (a file missing, truncated JSON, a safetensors
    header or zip directory cut short): anything else (no permission, a broken install) raises, so
    a good checkpoint is never set aside for an error that is not its own."""
    from safetensors import SafetensorError, safe_open

    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    weights = list(ckpt.glob("*.safetensors"))
    if not weights:
        return False
    for w in weights:
        try:
            with safe_open(str(w), "pt") as fh:
                list(fh.keys())
        except SafetensorError:  # a header or size that does not add up: cut mid-write
            return False
    opt = ckpt / "optimizer.pt"
    return opt.exists() and zipfile.is_zipfile(opt)


# ---- several processes (torchrun, accelerate launch: DDP, ZeRO) --------------------------------


DISTRIBUTED_TIMEOUT_HOURS = 12


def world_size() -> int:
    """How many training processes run this job (WORLD_SIZE, as torchrun and accelerate set it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that decides about and writes the run folder. The others
    train their share of each batch and write nothing."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may set incomplete checkpoints aside, or delete a run to be
    overwritten); the others run it once rank 0 is done. A no-op for one process."""
    if world_size() == 1:
        yield
        return
    from datetime import timedelta

    from accelerate import PartialState

    # The first to make the process group sets its collectives' timeout for the whole run: long enough
    # for rank 0 to ask a distillation teacher while the others wait (torch's default is 30 min).
    with PartialState(timeout=timedelta(hours=DISTRIBUTED_TIMEOUT_HOURS)).main_process_first():
        yield


def recomputes_activations(model: Any) -> bool:
    """Whether the trained model recomputes its activations in the backward pass, as the model itself
    reports it (transformers' flag on its layers; a PEFT wrapper hands the attribute to the model)."""
    return bool(getattr(model, "is_activation_checkpointing", False))


def replicas_in_sync(model: Any) -> bool | None:
    """Whether every process ends with the same trainable weights, as DDP's all-reduced gradients
    must leave them (a checksum per process, gathered); None for one process."""
    if world_size() == 1:
        return None
    import torch
    from accelerate.utils import gather_object

    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)
    sums = gather_object([round(total, 6)])
    return len(set(sums)) == 1


def latest_complete_checkpoint(ckpt_root: Path, set_aside: bool = True) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill mid-save) are set aside, not deleted
    (only by the main process: the others look once it has)."""
    if not ckpt_root.is_dir():
        return None
    ckpts = sorted(
        (p for p in ckpt_root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in ckpts:
        if checkpoint_complete(ckpt):
            return ckpt
        if set_aside:
            ckpt.rename(ckpt.with_name(f"incomplete-{ckpt.name}-{int(time.time())}"))
    return None


def _load_one(cfg: TrainConfig, name: str) -> list[Problem]:
    if is_eval_only(name, cfg.data_dir):
        raise TrainSetupError(f"{name} is an evaluation split; train on gsm8k-train, arith-train, logic-train or your own data")
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
    if cfg.curriculum in ("hard-only", "mixed"):
        if not any(p.level for p in problems):
            raise TrainSetupError(f"the {cfg.curriculum} curriculum needs MATH levels; {name!r} has none "
                                  "(use curriculum: pass-rate)")
        problems = _level_curriculum(cfg, filter_by_level(problems, [4, 5]), filter_by_level(problems, [1, 2, 3]))
    return sample_problems(problems, None, seed=cfg.seed)


def load_training_problems(cfg: TrainConfig) -> list[Problem]:
    """The training problems of every dataset after filters, interleaved; refuses evaluation splits
    and empty results.

    Without `dataset_weights` every problem of every dataset is in the pool, the datasets taking
    turns. With them the pool holds each dataset in its share, as large as the shares allow (the
    dataset that runs out first sets the size, as `datasets.interleave_datasets(...,
    stopping_strategy="first_exhausted")` does; each dataset is shuffled before it is cut). The
    trainers shuffle the pool, so which problems are in it decides what they see: weights
    [0.75, 0.25] over two sets of 5,000 give 5,000 + 1,667 (all 10,000 in a weighted order would be
    trained on half and half)."""
    sources = [_load_one(cfg, name) for name in cfg.dataset]
    if len(sources) == 1:
        return sources[0]
    weights = cfg.dataset_weights or [1.0] * len(sources)
    if cfg.dataset_weights is not None:
        total_weight = sum(weights)
        shares = [w / total_weight for w in weights]
        size = min(len(s) / share for s, share in zip(sources, shares, strict=True) if share > 0)
        sources = [s[: min(len(s), round(size * share))] for s, share in zip(sources, shares, strict=True)]
    mixed: list[Problem] = []
    taken = [0] * len(sources)
    total = sum(len(s) for s in sources)
    while len(mixed) < total:  # the dataset furthest behind its share goes next
        i = min((j for j in range(len(sources)) if taken[j] < len(sources[j])), key=lambda j: taken[j] / weights[j])
        mixed.append(sources[i][taken[i]])
        taken[i] += 1
    return mixed


def _level_curriculum(cfg: TrainConfig, hard: list[Problem], easy: list[Problem]) -> list[Problem]:
    if not hard:
        raise TrainSetupError("the hard-only/mixed curriculum leaves no hard problems")
    if cfg.curriculum == "hard-only":
        return hard
    mixed: list[Problem] = []
    for i in range(max(len(hard), len(easy))):
        mixed.extend(p for p in (hard[i] if i < len(hard) else None, easy[i] if i < len(easy) else None) if p)
    return mixed


def save_on_other_ranks(trainer: Any) -> None:
    """A process other than the main one joins save_model (under ZeRO-3 it gathers the sharded
    weights collectively) into a scratch folder; the main process writes the adapter."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgereason-rank-") as scratch:
        trainer.save_model(scratch)


def start_run_dir(prep: Prepared) -> None:
    """The run folder and its identity (config.key, config.yaml), written by the main process."""
    if is_main_process():
        prep.run_dir.mkdir(parents=True, exist_ok=True)
        (prep.run_dir / "config.key").write_text(config_key(prep.cfg))
        (prep.run_dir / "config.yaml").write_text(prep.cfg.to_yaml())


def prepare_run(cfg: TrainConfig) -> Prepared:
    """Everything that can fail, in one place, before any compute is spent (cheapest first: the data,
    then the model, which may be converted to a cached HF copy on first use, then the output folder)."""
    if cfg.low_memory:
        # Before the model's first use converts it here (its dequantized tensors, freed, would otherwise
        # stay in the heap: +520 MB resident after it, +250 MB so, measured) and before torch's first matmul
        # (oneDNN reads its cache capacity then). Process-wide, as the allocator is.
        limit_memory_growth()
    check_trackers(cfg.report_to)
    problems = load_training_problems(cfg)
    try:
        model = resolve_model(cfg.model, need_hf=True)
        model.require_hf()
    except LookupError as e:
        raise TrainSetupError(str(e)) from None
    with main_process_first():  # the main process decides (and sets aside, or overwrites); the others follow
        resume = check_output_dir(cfg) if is_main_process() else \
            latest_complete_checkpoint(cfg.run_dir / "checkpoints", set_aside=False)
    if cfg.init_adapter is not None:
        # The adapter continued decides the LoRA's shape; the run trains it as it is.
        cfg = cfg.model_copy(update=adapter_shape(cfg.init_adapter))
    return Prepared(cfg, model, problems, resume, get_format(cfg.format))


def adapter_shape(adapter: Path) -> dict[str, Any]:
    """The LoRA settings of a saved PEFT adapter (rank, alpha, target modules), checked before compute."""
    config = adapter / "adapter_config.json"
    if not config.is_file():
        raise TrainSetupError(f"init_adapter {adapter} is not a PEFT adapter folder (no adapter_config.json)")
    c = json.loads(config.read_text())
    if c.get("peft_type") != "LORA":
        raise TrainSetupError(f"init_adapter {adapter} is a {c.get('peft_type')} adapter; a LoRA is needed")
    targets = c.get("target_modules") or []
    return {"lora_r": int(c["r"]), "lora_alpha": int(c["lora_alpha"]),
            "lora_target_modules": sorted(targets) if isinstance(targets, list) else [targets]}


def load_tokenizer(prep: Prepared) -> Any:
    """The base model's tokenizer as every method trains with it: its chat template (the model's own
    when the checkpoint has none) and a pad token (EOS when it has none). Every method calls it first,
    so the process settings (threads, the LM head's scoring) are applied here, before any tensor work
    (`low_memory`'s allocator settings earlier still, in prepare_run)."""
    from transformers import AutoTokenizer

    set_torch_threads(prep.cfg.threads)
    # How TRL's fused LM head scores (process-wide, so set by every run as its config says)
    score_completions_only(prep.cfg.compact_scoring)
    small_tiles(prep.cfg.low_memory)
    tokenizer = AutoTokenizer.from_pretrained(prep.model.require_hf())
    if prep.model.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = prep.model.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_init_kwargs(cfg: TrainConfig, bf16: bool) -> dict[str, str] | None:
    """TRL's `model_init_kwargs`: the dtype its trainer loads the base model in. None where
    `load_policy` loads the model itself (a stage continuing an adapter), which TRL would otherwise
    warn about on every hybrid's later stage."""
    return None if cfg.init_adapter is not None else {"dtype": "bfloat16" if bf16 else "float32"}


def load_policy(cfg: TrainConfig, hf_dir: Path, bf16: bool) -> tuple[Any, Any]:
    """(model, peft_config) for a TRL trainer: the base model's folder and a new LoRA, or, with
    `init_adapter`, the base with that adapter loaded trainable (a hybrid's later stage continues
    the earlier stage's LoRA rather than stacking a second one)."""
    from peft import LoraConfig

    if cfg.init_adapter is None:
        return str(hf_dir), None if cfg.full_finetune else LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.bfloat16 if bf16 else torch.float32)
    return PeftModel.from_pretrained(base, str(cfg.init_adapter), is_trainable=True), None


# ---- prompts and records -----------------------------------------------------------------------


def build_prompt(tokenizer: Any, fmt: ReasoningFormat, question: str, prefill: bool) -> str:
    text = tokenizer.apply_chat_template(fmt.messages(question), add_generation_prompt=True, tokenize=False)
    return str(text) + (fmt.prefill if prefill else "")


def _torch_threads() -> int | None:
    """torch's intra-op threads as the run trains with them (None before torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def write_run_json(prep: Prepared, status: str, extra: dict[str, Any] | None = None) -> None:
    if not is_main_process():
        return
    cfg, hf = prep.cfg, prep.model.hf_dir
    record = {
        "name": cfg.name,
        "status": status,
        "config": cfg.model_dump(mode="json"),
        "versions": versions("torch", "transformers", "trl", "peft", "accelerate", "llama-cpp-python", "edgereason",
                             python=True),
        "base_model": {"name": prep.model.name, "source": prep.model.source, "hash": content_key(hf) if hf else None},
        "data": {"dataset": cfg.dataset, "problems": len(prep.problems), "hash": dataset_hash(prep.problems)},
        "seed": cfg.seed,
        "resumed_from": str(prep.resume) if prep.resume else None,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch_threads": _torch_threads()},
        "world_size": world_size(),
        **(extra or {}),
    }
    write_text_atomic(prep.run_dir / "run.json", json.dumps(record, indent=2))




TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def check_trackers(report_to: Sequence[str]) -> None:
    """Each tracker's package is importable (checked before any compute)."""
    import importlib.util

    missing = [t for t in report_to if importlib.util.find_spec(TRACKER_PACKAGES[t]) is None]
    if missing:
        raise TrainSetupError(f"report_to {', '.join(missing)}: pip install {' '.join(TRACKER_PACKAGES[t] for t in missing)} "
                              "(or edgereason[track])")


def report_to(cfg: Any) -> list[str] | str:
    """TRL's report_to for a run: the trackers asked for, else none."""
    return list(cfg.report_to) or "none"


def wire_reporting(trainer: Any, run_dir: Path, ours: list[Any]) -> None:
    """TensorBoard's event files go to <run>/tensorboard (not inside checkpoints/), and our callbacks run
    before the trackers' so the figures they add to each logged row (curriculum, beta, epsilon) reach
    the same stream."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(run_dir / "tensorboard")
    handler = trainer.callback_handler
    handler.callbacks = [c for c in ours if c in handler.callbacks] + [c for c in handler.callbacks if c not in ours]
