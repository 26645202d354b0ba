"""`EdgeGRPOTrainer`: TRL's GRPOTrainer with an edgereason rollout engine and CPU-lean scoring.

Completions come from the engine through TRL's public `rollout_func` hook (see rollouts.py). When
the engine's numbers differ from the policy's (llama.cpp on a quantized base), TRL's own correction
for a mismatched generation engine applies: TRL enables it under `use_vllm`, calls
`vllm_generation.sync_weights()` once per optimizer step before the rollouts, and weights each
sequence by the ratio of policy to engine probabilities (masking sequences whose ratio exceeds
`vllm_importance_sampling_clip_max`). The trainer points those three at the engine; nothing of TRL's
vLLM code runs. TRL is pinned to the minor release whose trainer this was checked against
(tests/test_train.py fails if the contract moves).

How TRL's fused LM head scores (completion positions only, tile size) is set for every method where
the run starts (edgereason.train.runs.load_tokenizer; why in edgereason.train.lm_head).
"""

from __future__ import annotations

import os
from typing import Any

# TRL flags rollout_func as experimental on every start; the pinned release is the one tested here.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer

from edgereason.train.rollouts import RolloutEngine


class EdgeGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, rollout_engine: RolloutEngine | None = None, **kwargs: Any) -> None:
        super().__init__(*args, rollout_func=rollout_engine.rollout if rollout_engine else None, **kwargs)  # type: ignore[misc]
        self.rollout_engine = rollout_engine
        if rollout_engine is not None and rollout_engine.importance_sampling:
            from edgereason.compat.trl import use_external_rollouts

            use_external_rollouts(self, rollout_engine)
