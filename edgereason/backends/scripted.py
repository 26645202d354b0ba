"""A deterministic backend with no model: every completion is a function of the prompt and the
sample's seed, emitted word by word.

It exists so the engine's own logic (format retries, voting and early stop, the bounded queue,
timeouts, cancellation, streaming, usage counting) can be tested in milliseconds and exactly, and so
client code can be developed against `edgereason serve --backend scripted` without loading a model.
It is a real `Backend`: the same engine code runs over it as over llama.cpp. Every call is recorded
(`calls`), as is the most generations it ever ran at once (`peak_concurrency`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edgereason.backends.base import Backend, Completion, Delta, Messages, SamplingParams

Script = Callable[[str, int], str]


@dataclass
class Call:
    prompt: str
    params: SamplingParams
    started: float
    finished: float | None = None
    cancelled: bool = False


class ScriptedBackend(Backend):
    """`script(prompt, seed) -> text`, or a list of texts picked by seed (cycled)."""

    name = "scripted"
    parallel_samples = False

    def __init__(self, script: Script | list[str] | str | None = None, *, token_delay_s: float = 0.0,
                 max_concurrency: int = 1, context_length: int = 4096, model_name: str = "scripted",
                 format: str | None = None) -> None:
        super().__init__()
        if script is None:
            script = ["<reasoning>\n2 + 2 = 4.\n</reasoning>\n<answer>\n4\n</answer>"]
        if isinstance(script, str):
            script = [script]
        if isinstance(script, list):
            texts = list(script)
            self.script: Script = lambda prompt, seed: texts[seed % len(texts)]
        else:
            self.script = script
        self.token_delay_s = token_delay_s
        self.max_concurrency = max_concurrency
        self.context_length = context_length
        self.model_name = model_name
        self.format = format
        self.calls: list[Call] = []
        self.peak_concurrency = 0
        self._active = 0
        self._lock = threading.Lock()

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        return "\n".join(lines) + "\nassistant: " + prefix

    def count_tokens(self, text: str) -> int:
        return len(_pieces(text))

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        out = []
        for i, prompt in enumerate(prompts):
            row = []
            for j in range(params.n):
                seed = (params.seed or 0) + i * params.n + j
                *_, last = self._generate(prompt, params, seed)
                assert last.completion is not None
                row.append(last.completion)
            out.append(row)
        return out

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        return self._generate(prompt, params, params.seed or 0)

    def _generate(self, prompt: str, params: SamplingParams, seed: int) -> Iterator[Delta]:
        call = Call(prompt, params, time.monotonic())
        with self._lock:
            self.calls.append(call)
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
        try:
            t0 = time.perf_counter()
            target = self.script(prompt, seed)
            pieces = _pieces(target)
            if params.ignore_eos:  # keep "generating" past the end, as an engine ignoring EOS would
                pieces = (pieces * (params.max_tokens // max(1, len(pieces)) + 1)) if pieces else [" ."] * params.max_tokens
            text, n, finish = "", 0, "stop"
            for piece in pieces:
                if params.should_stop():
                    call.cancelled = True
                    finish = "length"
                    break
                if n >= params.max_tokens:
                    finish = "length"
                    break
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                hit = next((s for s in params.stop if s and s in text + piece), None)
                if hit is not None:  # the stop string ends the text and is not returned (llama.cpp's way)
                    cut = (text + piece).index(hit)
                    tail = (text + piece)[len(text):cut]
                    if tail:
                        yield Delta(tail)
                    text = (text + piece)[:cut]
                    n += 1
                    break
                text += piece
                n += 1
                yield Delta(piece)
            done = Completion(text, self.count_tokens(prompt), n, finish, time.perf_counter() - t0)
            yield Delta("", finish, done)
        finally:
            call.finished = time.monotonic()
            with self._lock:
                self._active -= 1


def _pieces(text: str) -> list[str]:
    """Words with their leading whitespace: the scripted engine's tokens."""
    return re.findall(r"\s*\S+|\s+$", text)
