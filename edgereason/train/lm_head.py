"""How TRL's fused LM head runs here: which positions it scores, and how large a tile of logits it makes.

Both GRPO and SFT score tokens through TRL's fused head (`fused_lm_head=True`): the hidden states are
projected onto the vocabulary one tile at a time, and only per-token figures (log-prob, entropy) are
kept, never the full logits. Two of its choices are made for GPUs:

- It compacts to the labelled positions on Triton devices only, and scores every position elsewhere to
  keep tile shapes fixed for ahead-of-time compilers (Neuron). Eager CPU compiles nothing, and here the
  prompt is most of each row (143 of ~250 tokens in the GRPO recipe), so every forward and backward
  projected ~2.5x more positions through the 49k-wide head than it scores: measured 13.3 -> 10.2 s per
  GRPO step. `score_completions_only` compacts on every device; tests check the compact and the full
  paths give the same log-probs and the same SFT loss.
- Its tiles are 4,096 tokens by 32,768 vocabulary entries, and the CPU path's element-wise folds make
  fp32 temporaries of a whole tile: a 1.5-2 GB swing per SFT batch of 8 here (docs/measurements.md).
  `small_tiles` (under `low_memory`) makes them 1,024 by 4,096, a few MB each.
"""

from __future__ import annotations

# Under low_memory: tokens by vocabulary entries per tile of logits (16 MB as fp32).
SMALL_TILE = (1024, 4096)


def score_completions_only(enable: bool = True) -> None:
    """Make TRL's fused LM head score only the positions that have a label (the completion), on every
    device; `enable=False` gives TRL's own choice back. Process-wide: each run sets it as its config says."""
    from edgereason.compat.trl import score_labelled_positions_on_cpu

    score_labelled_positions_on_cpu(enable)


def small_tiles(enable: bool = True) -> None:
    """Make TRL's fused LM head project onto the vocabulary in SMALL_TILE tiles (`enable=False`: TRL's own)."""
    from edgereason.compat.trl import set_lm_head_tiles

    set_lm_head_tiles(*(SMALL_TILE if enable else (None, None)))
