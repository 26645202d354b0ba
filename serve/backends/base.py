"""The engine interface every backend implements; engine-specific code stays in its own module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


@dataclass
class SamplingParams:
    """Generation settings, recorded with every eval result."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF, for backends that constrain decoding
    prefix: str = ""  # starts the assistant turn (e.g. a format's prefill); included in Completion.text

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "grammar"} | {"constrained": self.grammar is not None}


@dataclass
class Completion:
    """One generated completion with its token counts and timings."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    latency_s: float
    ttft_s: float | None = None


class Backend(ABC):
    """Chat generation over one loaded model."""

    name: str = "backend"
    model_name: str = ""

    @abstractmethod
    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        """For each conversation in `batch`, `params.n` completions of the assistant turn."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""
