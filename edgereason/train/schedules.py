"""GRPO control schedules as pure functions: per-generation temperatures, adaptive clipping ε and
the adaptive KL coefficient β. The trainer callbacks apply them; the tests check them directly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def generation_temperatures(schedule: Sequence[float], num_generations: int) -> list[float]:
    """Temperature of each of the `num_generations` samples of one prompt.

    The schedule is cycled when shorter than the group (e.g. 0.6, 0.8, 1.0, 1.2 for a group of 8
    gives each temperature twice), so a group always spans cautious to exploratory sampling."""
    if not schedule:
        raise ValueError("temperature schedule is empty")
    if any(t <= 0 for t in schedule):
        raise ValueError(f"temperatures must be > 0, got {list(schedule)}")
    return [float(schedule[i % len(schedule)]) for i in range(num_generations)]


def row_temperatures(schedule: Sequence[float], num_generations: int, rows: int, offset: int = 0) -> list[float]:
    """Temperatures for a generation batch laid out as TRL lays it out: each prompt repeated
    `num_generations` times in a row; `offset` is the batch's first global row (multi-process)."""
    per_group = generation_temperatures(schedule, num_generations)
    return [per_group[(offset + i) % num_generations] for i in range(rows)]


def adaptive_epsilon(step: int, epsilon0: float, tau: float, epsilon_min: float) -> float:
    """Clipping range ε(t) = ε0·exp(−t/τ) + ε_min: wide early for fast learning, narrowing as the
    policy settles. τ <= 0 disables the decay (ε0 + ε_min throughout)."""
    if tau <= 0:
        return epsilon0 + epsilon_min
    return epsilon0 * math.exp(-max(step, 0) / tau) + epsilon_min


@dataclass
class AdaptiveKL:
    """Adaptive KL coefficient: ×factor when the measured KL exceeds 2× target, ÷factor below 0.5×
    target, kept inside [beta_min, beta_max]."""

    beta: float
    target: float = 0.01
    factor: float = 1.5
    beta_min: float = 1e-4
    beta_max: float = 1.0

    def update(self, kl: float) -> float:
        if math.isnan(kl):
            return self.beta
        if kl > 2 * self.target:
            self.beta = min(self.beta * self.factor, self.beta_max)
        elif kl < 0.5 * self.target:
            self.beta = max(self.beta / self.factor, self.beta_min)
        return self.beta


@dataclass
class SaturationDetector:
    """Early stop when the mean reward has plateaued near its ceiling, or the gradient norm has
    collapsed, for `patience` consecutive logged steps (LoRA on small models overfits soon after)."""

    reward_ceiling: float
    saturation_fraction: float = 0.95
    min_grad_norm: float = 1e-4
    patience: int = 5
    _saturated: int = 0
    _collapsed: int = 0

    def update(self, reward: float | None, grad_norm: float | None) -> str | None:
        """Feed one step's figures; returns the reason to stop, or None."""
        if reward is not None:
            self._saturated = self._saturated + 1 if reward >= self.saturation_fraction * self.reward_ceiling else 0
        if grad_norm is not None:
            self._collapsed = self._collapsed + 1 if grad_norm < self.min_grad_norm else 0
        if self._saturated >= self.patience:
            return f"reward saturated (>= {self.saturation_fraction:.0%} of {self.reward_ceiling:g} for {self.patience} steps)"
        if self._collapsed >= self.patience:
            return f"gradient norm collapsed (< {self.min_grad_norm:g} for {self.patience} steps)"
        return None
