"""TRL internals: the fused LM head's Triton switch, GRPO's clipping and KL attributes, the
vLLM-server attributes an external rollout engine stands in for. Checked against the pinned TRL."""

from __future__ import annotations

import inspect
from typing import Any

import trl.kernels.chunked_logprob as trl_logprob
import trl.trainer.utils as trl_utils
from trl import GRPOTrainer

from edgereason.compat import require

require(callable(getattr(trl_utils, "_use_triton", None)), "trl", "trl.trainer.utils._use_triton is gone")
require(isinstance(getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None), int), "trl",
        "trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE is gone")
require(isinstance(getattr(trl_logprob, "TOKEN_CHUNK_SIZE", None), int), "trl",
        "trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE is gone")
_INIT = inspect.getsource(GRPOTrainer.__init__)
for _attr in ("epsilon_low", "epsilon_high", "beta", "vllm_mode", "use_vllm", "_last_loaded_step",
              "vllm_importance_sampling_correction"):
    require(f"self.{_attr} =" in _INIT, "trl", f"GRPOTrainer.__init__ no longer sets self.{_attr}")


_TRL_USE_TRITON = trl_utils._use_triton
_TRL_TILE = (trl_logprob.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)


def score_labelled_positions_on_cpu(enable: bool = True) -> None:
    """Make TRL's fused LM head compact to the labelled positions on CPU too (TRL does it on Triton
    devices only); `enable=False` gives TRL's own switch back. Idempotent: both build on TRL's
    original. Why: edgereason.train.lm_head."""
    trl_utils._use_triton = (lambda device: device.type == "cpu" or _TRL_USE_TRITON(device)) if enable else _TRL_USE_TRITON


def set_lm_head_tiles(tokens: int | None, vocab: int | None) -> None:
    """The fused LM head's tile of logits: `tokens` positions by `vocab` entries (None: TRL's own).
    Both are module globals TRL reads at each call. Why: edgereason.train.lm_head."""
    trl_logprob.TOKEN_CHUNK_SIZE = tokens or _TRL_TILE[0]
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = vocab or _TRL_TILE[1]


def lm_head_tiles() -> tuple[int, int]:
    """The fused LM head's tile now: (positions, vocabulary entries)."""
    return trl_logprob.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE


def set_clip_range(trainer: GRPOTrainer, low: float, high: float) -> None:
    """GRPO's PPO-style clipping range, read by its loss at every step."""
    trainer.epsilon_low = low
    trainer.epsilon_high = high


def clip_low(trainer: GRPOTrainer) -> float:
    return float(trainer.epsilon_low)


def set_kl_beta(trainer: GRPOTrainer, beta: float) -> None:
    """The KL coefficient, read by the loss at every step."""
    trainer.beta = beta


def kl_beta(trainer: GRPOTrainer) -> float:
    return float(trainer.beta)


def use_external_rollouts(trainer: GRPOTrainer, engine: Any) -> None:
    """Make TRL treat `engine` as its vLLM server: it then corrects for the sampler's log-probs
    (importance sampling) and calls only `engine.sync_weights()`; "server" mode keeps it off its
    colocated-engine code paths."""
    trainer.use_vllm = True
    trainer.vllm_mode = "server"
    trainer.vllm_generation = engine
    trainer.vllm_importance_sampling_correction = True
    trainer._last_loaded_step = -1
