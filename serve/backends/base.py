"""The engine interface every backend implements; engine-specific code stays in its own module.

A backend renders chat messages with the model's own template (`render`) and generates from raw
prompts (`complete`); `chat` combines the two and puts a format prefill back in front of the text.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
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
    prefix: str = ""  # starts the assistant turn (e.g. a format's prefill); included in chat text
    deadline: float | None = None  # time.monotonic() after which generation stops (server timeouts)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("grammar", "deadline")} | {
            "constrained": self.grammar is not None}

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


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
    """Generation over one loaded model."""

    name: str = "backend"
    model_name: str = ""
    format: str | None = None  # the reasoning format an export manifest recorded, if any
    # True when `complete` with params.n > 1 decodes the n samples together (cheaper than n calls).
    parallel_samples: bool = False
    context_length: int | None = None

    @abstractmethod
    def render(self, messages: Messages, prefix: str = "") -> str:
        """The prompt text for `messages` with the assistant turn opened (and `prefix` after it)."""

    @abstractmethod
    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """For each raw prompt, `params.n` completions of the text that follows it."""

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        """For each conversation, `params.n` assistant completions, `params.prefix` included."""
        results = self.complete([self.render(m, params.prefix) for m in batch], params)
        for row in results:
            for c in row:
                c.text = restore_closing_tag(params.prefix + c.text, params.stop, c.finish_reason)
        return results

    def stream(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        """Text deltas of one chat completion (the prefix first). Engines that can stream override it."""
        (completion,) = self.chat([messages], params)[0][:1]
        yield completion.text

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""


def restore_closing_tag(text: str, stops: list[str], finish_reason: str) -> str:
    """Engines drop (llama.cpp) or keep (transformers) the stop string they matched. A closing tag
    belongs to the format, so put it back when the text opened that block but never closed it."""
    if finish_reason != "stop":
        return text
    for close_tag in stops:
        if close_tag.startswith("</") and close_tag.replace("</", "<", 1) in text and close_tag not in text:
            return text.rstrip() + "\n" + close_tag
    return text
