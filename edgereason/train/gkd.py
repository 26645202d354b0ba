"""Logit-level distillation (`train --method gkd`): TRL's `GKDTrainer` on the same checked rationales,
LoRA, run folder, dev loss and run record as SFT (`edgereason.train.sft` runs it).

The student learns the teacher's whole next-token distribution at every completion position (a
generalized Jensen-Shannon divergence, `gkd_beta`: 0 forward KL, 1 reverse KL), not just the
rationale's token. That needs one vocabulary: the teacher is any model with Hugging Face weights
(an HF folder, an embedded name, a GGUF converted once) whose tokenizer is the student's, checked
before either model is loaded for training. `gkd_lmbda` is the share of batches on which the
student writes its own completion first (on-policy, GKD's point, and HF `generate` on CPU: slow);
the default 0 distils on the checked rationales only. A teacher of another tokenizer is distilled
at the sequence level instead (`--method distill`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgereason.formats import ReasoningFormat
from edgereason.models import ModelNotFoundError, resolve_model
from edgereason.rationales import Rationale
from edgereason.train.config import TrainConfig
from edgereason.train.runs import TrainSetupError


def teacher_checkpoint(cfg: TrainConfig, student_tokenizer: Any) -> Path:
    """The teacher's HF folder, after checking that it tokenizes exactly as the student does."""
    from transformers import AutoTokenizer

    assert cfg.teacher is not None  # TrainConfig requires one for gkd
    if cfg.teacher.startswith(("http://", "https://")):
        raise TrainSetupError(f"gkd needs the teacher's logits, which {cfg.teacher} does not serve; distil from a "
                              "server with --method distill (its traces), or give the teacher's weights")
    try:
        folder = resolve_model(cfg.teacher, need_hf=True).require_hf()
    except ModelNotFoundError as e:
        raise TrainSetupError(f"gkd teacher {cfg.teacher!r}: {e}") from e
    teacher_vocab = AutoTokenizer.from_pretrained(folder).get_vocab()
    if teacher_vocab != student_tokenizer.get_vocab():
        raise TrainSetupError(
            f"gkd teacher {cfg.teacher!r} has another tokenizer than the student ({len(teacher_vocab)} vs "
            f"{len(student_tokenizer.get_vocab())} tokens): logit-level distillation compares the two next-token "
            "distributions token by token; use --method distill (sequence level) for this teacher")
    return folder


def conversation(fmt: ReasoningFormat, r: Rationale) -> list[dict[str, str]]:
    """The rationale as the chat GKD's collator templates: the format's messages, then the answer in
    the format (the prefill included; the collator scores what follows the row's prompt)."""
    return [*fmt.messages(r.problem.prompt), {"role": "assistant", "content": fmt.render(r.reasoning, r.answer)}]


def trl_gkd() -> tuple[Any, Any]:
    """(GKDConfig, GKDTrainer). TRL keeps GKD under `trl.experimental` and warns on every import;
    choosing `--method gkd` is the user's choice of it (the README says it is experimental in TRL)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def gkd_trainer(teacher: Path, bf16: bool, **trainer_kw: Any) -> Any:
    """TRL's GKDTrainer with the teacher loaded in the student's precision, for evaluation only."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.bfloat16 if bf16 else torch.float32)
    return trl_gkd()[1](teacher_model=model.eval(), **trainer_kw)


def gkd_settings(cfg: TrainConfig) -> dict[str, Any]:
    """GKDConfig's own fields from ours; the rest is SFT's."""
    return {"lmbda": cfg.gkd_lmbda, "beta": cfg.gkd_beta, "temperature": 1.0,  # the divergence on plain distributions
            "max_new_tokens": cfg.max_completion_length, "seq_kd": False}
