"""The reasoning engine between the HTTP layer and a backend: admission control, format-constrained
generation, validation with retries, the reasoning split and majority voting."""

from __future__ import annotations

import asyncio
import time
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from edgereason.formats import ParsedCompletion, ReasoningFormat
from edgereason.grading import extract_answer
from edgereason.voting import VoteResult, decided, group_answers, majority_vote
from serve.backends.base import Backend, Completion, Messages, SamplingParams


class QueueFullError(RuntimeError):
    """More requests waiting than the configured queue allows (HTTP 429)."""


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context with room to answer (HTTP 400)."""


@dataclass
class EngineLimits:
    max_tokens: int = 512  # default and ceiling for max_tokens
    max_n: int = 8
    max_k: int = 16
    concurrency: int = 1  # generations running at once (llama.cpp contexts are not thread-safe)
    max_queue: int = 32  # requests waiting beyond that: 429
    format_retries: int = 1  # extra attempts for a completion that fails format validation
    timeout_s: float = 300.0


@dataclass
class Answer:
    """One finished completion, validated and split."""

    text: str
    parsed: ParsedCompletion
    completion: Completion
    attempts: int

    @property
    def reasoning(self) -> str | None:
        return self.parsed.reasoning

    @property
    def content(self) -> str:
        """The final answer alone when the format holds; otherwise the whole text."""
        return self.parsed.answer if self.parsed.valid and self.parsed.answer is not None else self.text


@dataclass
class VotedAnswer:
    answer: Answer | None
    vote: VoteResult
    samples: list[Answer] = field(default_factory=list)
    early_stopped: bool = False


class ReasoningEngine:
    def __init__(self, backend: Backend, fmt: ReasoningFormat, limits: EngineLimits | None = None) -> None:
        self.backend = backend
        self.fmt = fmt
        self.limits = limits or EngineLimits()
        self._slots = asyncio.Semaphore(self.limits.concurrency)
        self._waiting = 0
        self._lock = threading.Lock()  # one generation at a time inside the backend
        self.stats = {"votes": 0, "format_retries": 0, "invalid": 0}

    @property
    def queue_depth(self) -> int:
        return self._waiting

    # ---- parameters --------------------------------------------------------------------------
    def params(self, reasoning: bool, max_tokens: int | None, temperature: float, top_p: float,
               seed: int | None, stop: list[str]) -> SamplingParams:
        p = SamplingParams(
            max_tokens=max_tokens or self.limits.max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=list(stop),
        )
        if reasoning and self.fmt.kind == "tags":
            p.prefix = self.fmt.prefill
            p.grammar = self.fmt.grammar(after_prefill=True)
            p.stop = [*self.fmt.stop_sequences(), *p.stop]
        return p

    def check_prompt(self, request: Messages | str, params: SamplingParams) -> None:
        """Refuse a prompt that leaves no room to answer; cap max_tokens to what the context holds."""
        ctx = self.backend.context_length
        if ctx is None:
            return
        text = request if isinstance(request, str) else self.backend.render(request, params.prefix)
        n = self.backend.count_tokens(text)
        if n + 1 > ctx:
            raise PromptTooLongError(f"the prompt is {n} tokens; the context holds {ctx}")
        params.max_tokens = min(params.max_tokens, ctx - n)

    # ---- generation --------------------------------------------------------------------------
    async def _run(self, fn, *args):
        """Run `fn` in a worker thread once a slot is free; refuse when the queue is full."""
        if self._waiting >= self.limits.max_queue:
            raise QueueFullError(f"server busy: {self._waiting} requests queued (limit {self.limits.max_queue})")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        # The same deadline travels into the backend, which stops generating when it passes: a
        # timed-out request frees the model instead of running on in its thread.
        deadline = time.monotonic() + self.limits.timeout_s
        args = tuple(replace(a, deadline=deadline) if isinstance(a, SamplingParams) else a for a in args)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._locked, fn, *args), self.limits.timeout_s)
        finally:
            self._slots.release()

    def _locked(self, fn, *args):
        with self._lock:
            return fn(*args)

    def _generate_valid(self, request: Messages | str, params: SamplingParams, validate: bool) -> Answer:
        """One completion of a conversation (or a raw prompt); with `validate`, retried with a new
        seed while the format fails."""
        attempts = 0
        while True:
            attempts += 1
            if isinstance(request, str):
                (completion,) = self.backend.complete([request], params)[0]
            else:
                (completion,) = self.backend.chat([request], params)[0]
            parsed = self.fmt.parse(completion.text)
            if parsed.valid or not validate or attempts > self.limits.format_retries:
                if not parsed.valid and validate:
                    self.stats["invalid"] += 1
                return Answer(completion.text, parsed, completion, attempts)
            self.stats["format_retries"] += 1
            if params.seed is not None:
                params.seed += 1000

    def _sample_together(self, request: Messages | str, params: SamplingParams, n: int, validate: bool) -> list[Answer]:
        """n samples in one backend call (backends that decode them together), then the usual
        validation retries for any that fail the format."""
        p = replace(params, n=n)
        row = self.backend.complete([request], p)[0] if isinstance(request, str) else self.backend.chat([request], p)[0]
        answers = []
        for i, c in enumerate(row):
            parsed = self.fmt.parse(c.text)
            if validate and not parsed.valid and self.limits.format_retries:
                self.stats["format_retries"] += 1
                retry = replace(params, seed=None if params.seed is None else params.seed + 1000 + i)
                answers.append(self._generate_valid(request, retry, validate))
                answers[-1].attempts += 1
            else:
                if validate and not parsed.valid:
                    self.stats["invalid"] += 1
                answers.append(Answer(c.text, parsed, c, 1))
        return answers

    async def complete(self, request: Messages | str, params: SamplingParams, n: int, validate: bool) -> list[Answer]:
        self.check_prompt(request, params)
        if n > 1 and self.backend.parallel_samples:
            return await self._run(self._sample_together, request, params, n, validate)
        answers = []
        for i in range(n):
            p = _nth_sample(params, i)
            answers.append(await self._run(self._generate_valid, request, p, validate))
        return answers

    async def vote(self, messages: Messages, params: SamplingParams, k: int, early_stop: bool) -> VotedAnswer:
        """maj@k: sample until k samples or until the leader cannot be overtaken."""
        self.check_prompt(messages, params)
        samples: list[Answer] = []
        answers: list[str | None] = []
        early = False
        if k > 1 and self.backend.parallel_samples:  # all k at once: cheaper than stopping early
            samples = await self._run(self._sample_together, messages, params, k, False)
            answers = [extract_answer(a.text, self.fmt).text if a.parsed.valid else None for a in samples]
            k = 0  # nothing left to sample one by one
        for i in range(k):
            p = _nth_sample(params, i)
            a = await self._run(self._generate_valid, messages, p, False)
            samples.append(a)
            answers.append(extract_answer(a.text, self.fmt).text if a.parsed.valid else None)
            if early_stop and i + 1 < k:
                counts = [g.count for g in group_answers(answers)]
                if decided(counts, k - i - 1):
                    early = True
                    break
        result = majority_vote(answers, [s.parsed.valid for s in samples])
        self.stats["votes"] += 1
        winner = samples[result.winner] if result.winner is not None else None
        return VotedAnswer(winner, result, samples, early)

    def stream(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        """Text deltas of one completion (runs in the caller's thread, under the engine lock)."""
        self.check_prompt(messages, params)
        params = replace(params, deadline=time.monotonic() + self.limits.timeout_s)
        with self._lock:
            yield from self.backend.stream(messages, params)


def _nth_sample(params: SamplingParams, i: int) -> SamplingParams:
    """A copy of `params` for the i-th sample of a request: its own seed, so samples differ but
    the request stays reproducible."""
    return replace(params, seed=None if params.seed is None else params.seed + i)


class ReasoningSplitter:
    """Splits streamed text into reasoning and answer deltas without emitting the tags.

    Text that might be the start of a tag is held back until it is clearly not one."""

    def __init__(self, fmt: ReasoningFormat) -> None:
        t = fmt.tags
        self.open_r, self.close_r = t["reasoning_open"], t["reasoning_close"]
        self.open_a, self.close_a = t["answer_open"], t["answer_close"]
        self.buffer = ""
        self.state = "before"  # before -> reasoning -> between -> answer -> after

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """(kind, text) pieces: kind is "reasoning" or "content"."""
        self.buffer += delta
        out: list[tuple[str, str]] = []
        while True:
            tag = {"before": self.open_r, "reasoning": self.close_r, "between": self.open_a, "answer": self.close_a}.get(self.state)
            if tag is None:
                self.buffer = ""
                return out
            pos = self.buffer.find(tag)
            if pos >= 0:
                self._emit(out, self.buffer[:pos])
                self.buffer = self.buffer[pos + len(tag):]
                self.state = {"before": "reasoning", "reasoning": "between", "between": "answer", "answer": "after"}[self.state]
                continue
            keep = _partial_suffix(self.buffer, tag)
            self._emit(out, self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        if self.state == "reasoning":
            out.append(("reasoning", text))
        elif self.state == "answer":
            out.append(("content", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
