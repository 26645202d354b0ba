"""`EdgeGRPOTrainer`: TRL's GRPOTrainer with an edgereason rollout engine and CPU-lean scoring.

Completions come from the engine through TRL's public `rollout_func` hook (see rollouts.py). When
the engine's numbers differ from the policy's (llama.cpp on a quantized base), TRL's own correction
for a mismatched generation engine applies: TRL enables it under `use_vllm`, calls
`vllm_generation.sync_weights()` once per optimizer step before the rollouts, and weights each
sequence by the ratio of policy to engine probabilities (masking sequences whose ratio exceeds
`vllm_importance_sampling_clip_max`). The trainer points those three at the engine; nothing of TRL's
vLLM code runs. TRL is pinned to the minor release whose trainer this was checked against
(tests/test_train.py fails if the contract moves).

On CPU, `score_completions_only` makes TRL's fused LM head score only the completion positions, as
TRL itself does on Triton devices (see `score_completions_only`).
"""

from __future__ import annotations

import os
from typing import Any

# TRL flags rollout_func as experimental on every start; the pinned release is the one tested here.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer

from edgereason.train.rollouts import RolloutEngine


def score_completions_only() -> None:
    """Make TRL's fused LM head score only the positions that have a label, on every device.

    TRL 1.16 compacts to the labelled (completion) positions on Triton devices and scores every
    position elsewhere, to keep tile shapes fixed for ahead-of-time compilers (Neuron). Eager CPU
    compiles nothing, and here the prompt is most of each row (143 of ~250 tokens), so every
    forward and backward projected ~2.5x more positions through the 49k-wide head than it scores:
    measured 13.3 -> 10.2 s per step. The decision is the one name `_use_triton` imported into
    trl.trainer.utils (TRL's kernels keep their own reference); tests check the compact and the full
    paths give the same log-probs, and that the name still exists in the pinned release."""
    from edgereason.compat.trl import score_labelled_positions_on_cpu

    score_labelled_positions_on_cpu()


class EdgeGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, rollout_engine: RolloutEngine | None = None, compact_scoring: bool = True,
                 **kwargs: Any) -> None:
        if compact_scoring:
            score_completions_only()
        super().__init__(*args, rollout_func=rollout_engine.rollout if rollout_engine else None, **kwargs)  # type: ignore[misc]
        self.rollout_engine = rollout_engine
        if rollout_engine is not None and rollout_engine.importance_sampling:
            from edgereason.compat.trl import use_external_rollouts

            use_external_rollouts(self, rollout_engine)
