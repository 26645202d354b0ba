"""The reasoning engine between the HTTP routes and a backend: admission control, format-constrained
generation, validation with retries, majority voting with early stop, and streaming.

No lock sits around the backend. Requests run as soon as the backend has room
(`backend.max_concurrency`: llama-server's slots, vLLM's scheduler, the replicas' limits; 1 for the
in-process reference engines); up to `limits.max_queue` more wait, and beyond that a request is
refused (HTTP 429). Streaming requests go through the same admission and deadline. Every
generation carries the request's deadline and a cancel flag into the engine, so a timed-out request
or a client that disconnects stops the generation itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from edgereason.backends.base import Backend, Capability, Completion, Delta, Messages, SamplingParams, restore_closing_tag
from edgereason.backends.forcing import answer_params, attach_answer, forcing_suffix, reasoning_params
from edgereason.formats import ParsedCompletion, ReasoningFormat
from edgereason.grading import extract_answer
from edgereason.serve.config import EngineLimits
from edgereason.voting import VoteMode, VoteResult, VoteTally, vote
from edgereason.voting import ballot as ballot_of
from edgereason.work_check import WorkCheck, check_work

#: Room kept in the context for the tags the runtime writes before a forced answer (closing and opening tags, newlines).
FORCED_TAG_TOKENS = 16

#: A format retry samples at least this hot: a greedy retry would repeat the invalid text verbatim.
RETRY_TEMPERATURE = 0.7


class QueueFullError(RuntimeError):
    """More requests waiting than the configured queue allows (HTTP 429)."""


class PromptTooLongError(ValueError):
    """The prompt does not fit the model's context with room to answer (HTTP 400)."""


@dataclass
class Answer:
    """One finished completion, validated and split; `tokens_spent` counts every attempt."""

    text: str
    parsed: ParsedCompletion
    completion: Completion
    attempts: int = 1
    tokens_spent: int = 0
    validated: bool = True  # False when the format was not asked for (reasoning off)

    @property
    def reasoning(self) -> str | None:
        return self.parsed.reasoning if self.validated else None

    @property
    def content(self) -> str:
        """The final answer alone when the format holds; otherwise the whole text."""
        if self.validated and self.parsed.valid and self.parsed.answer is not None:
            return self.parsed.answer
        return self.text


@dataclass
class VotedAnswer:
    answer: Answer | None
    vote: VoteResult
    samples: list[Answer] = field(default_factory=list)
    early_stopped: bool = False
    checks: list[WorkCheck] = field(default_factory=list)  #: per sample, in a vote that checks the work
    note: str | None = None  #: why the vote ran in another mode than the one asked for


class ReasoningEngine:
    def __init__(self, backend: Backend, fmt: ReasoningFormat, limits: EngineLimits | None = None) -> None:
        self.backend = backend
        self.fmt = fmt
        self.limits = limits or EngineLimits()
        self._slots: asyncio.Semaphore | None = None
        self._exclusive = asyncio.Lock()  # one exclusive() at a time: two would each hold part of the slots
        self.waiting = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.counters = {"format_retries": 0, "invalid": 0, "votes": 0, "early_stops": 0, "cancelled": 0,
                         "forced_answers": 0}

    # ---- admission -----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Run when the backend has room; wait in a bounded queue; refuse beyond it."""
        if self._slots is None:  # made inside the running loop
            self._slots = asyncio.Semaphore(max(1, self.backend.max_concurrency))
        if self._slots.locked() and self.waiting >= self.limits.max_queue:
            raise QueueFullError(f"server busy: {self.waiting} requests queued (limit {self.limits.max_queue})")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Every slot, once the requests in them have finished; requests that arrive meanwhile wait in
        the queue (429 beyond it) and run after. For changing the engine under the server (adapters)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.backend.max_concurrency))
        async with self._exclusive:
            taken = 0
            try:
                for _ in range(max(1, self.backend.max_concurrency)):
                    await self._slots.acquire()
                    taken += 1
                yield
            finally:
                for _ in range(taken):
                    self._slots.release()

    # ---- parameters and prompts ----------------------------------------------------------------
    def params(self, reasoning: bool, max_tokens: int | None, temperature: float, top_p: float,
               seed: int | None, stop: list[str], **extra: Any) -> SamplingParams:
        settings: dict[str, Any] = {"max_tokens": max_tokens or self.limits.max_tokens, "temperature": temperature,
                                    "top_p": top_p, "seed": seed, "stop": list(stop), **extra}
        if reasoning and self.fmt.kind == "tags":
            settings.update(prefix=self.fmt.prefill, stop=[*self.fmt.stop_sequences(), *stop])
            if Capability.GRAMMAR in self.backend.supports and settings.get("grammar") is None:
                settings["grammar"] = self.fmt.grammar(after_prefill=True)  # elsewhere validation and retries keep the format
        return SamplingParams(**settings)

    def render(self, messages: Messages, params: SamplingParams) -> str:
        return self.backend.render(messages, params.prefix)

    async def check_prompt(self, prompt: str, params: SamplingParams) -> tuple[int, SamplingParams]:
        """Refuse a prompt that leaves no room to answer. Returns the prompt's token count (0 when the
        engine enforces its own context) and the settings with max_tokens capped to what the context
        holds beside the prompt."""
        ctx = self.backend.context_length
        if ctx is None:
            return 0, params
        n = await asyncio.to_thread(self.backend.count_tokens, prompt)
        # a forced answer follows the reasoning in the same sequence, after tags the runtime writes
        reserve = FORCED_TAG_TOKENS if params.force_answer else 0
        room = ctx - n - reserve
        if room < 1 + params.force_answer:
            raise PromptTooLongError(f"the prompt is {n} tokens; the context holds {ctx} per sequence"
                                     + (f", with {params.force_answer + reserve} kept for a forced answer"
                                        if params.force_answer else ""))
        return n, replace(params, max_tokens=min(params.max_tokens, room))

    def _deadlined(self, params: SamplingParams) -> SamplingParams:
        return replace(params, deadline=time.monotonic() + self.limits.timeout_s)

    def answer_of(self, c: Completion, params: SamplingParams, validate: bool) -> Answer:
        text = restore_closing_tag(params.prefix + c.text, params.stop, c.finish_reason) if params.prefix else c.text
        parsed = self.fmt.parse(text)
        return Answer(text, parsed, c, 1, c.completion_tokens, validate)

    # ---- generation ----------------------------------------------------------------------------
    async def _force_answer(self, prompt: str, params: SamplingParams, c: Completion) -> None:
        """Give `c` (generated after `prompt`, which ends in the prefill) its forced answer when it ended
        without an answer block (backends.forcing), under the caller's slot and deadline."""
        suffix = forcing_suffix(self.fmt, params, c, params.prefix)
        if suffix is not None:
            (a,) = await self.backend.acomplete(prompt + c.text + suffix, answer_params(params, self.fmt))
            attach_answer(c, suffix, a)
            self.counters["forced_answers"] += 1

    async def _call(self, prompt: str, params: SamplingParams) -> list[Completion]:
        params = self._deadlined(params)

        async def generate() -> list[Completion]:
            out = await self.backend.acomplete(prompt, reasoning_params(params, self.fmt))
            for c in out:
                await self._force_answer(prompt, params, c)
            return out

        async with self.slot():
            out = await asyncio.wait_for(generate(), self.limits.timeout_s)
        if params.deadline is not None and time.monotonic() >= params.deadline:
            raise TimeoutError  # the engine stopped at the deadline: a cut answer is not an answer
        return out

    @staticmethod
    def worth_retrying(answer: Answer) -> bool:
        """A format-invalid completion is retried only when it ended by itself: one cut by the token
        budget (finish_reason "length") would be cut again by the same budget, and under load every
        such retry doubles the work for nothing; the client sees "length" and can raise max_tokens."""
        return answer.validated and not answer.parsed.valid and answer.completion.finish_reason != "length"

    @staticmethod
    def retry_params(params: SamplingParams, offset: int = 1000) -> SamplingParams:
        """A retry's own seed, and a sampling temperature: greedy decoding would repeat the invalid text."""
        return replace(params.nth(offset), temperature=max(params.temperature, RETRY_TEMPERATURE))

    async def _generate_valid(self, prompt: str, params: SamplingParams, validate: bool) -> Answer:
        """One completion; with `validate`, retried with a new seed while the format fails."""
        spent, attempts = 0, 0
        while True:
            attempts += 1
            (c,) = await self._call(prompt, replace(params, n=1))
            answer = self.answer_of(c, params, validate)
            spent += c.completion_tokens
            if not self.worth_retrying(answer) or attempts > self.limits.format_retries:
                if validate and not answer.parsed.valid:
                    self.counters["invalid"] += 1
                answer.attempts, answer.tokens_spent = attempts, spent
                return answer
            self.counters["format_retries"] += 1
            params = self.retry_params(params)

    async def complete(self, prompt: str, params: SamplingParams, n: int, validate: bool) -> list[Answer]:
        """n completions; backends that decode samples together get one call, then retries."""
        if n > 1 and self.backend.parallel_samples:
            first = [self.answer_of(c, params, validate) for c in await self._call(prompt, replace(params, n=n))]
            out = []
            for i, a in enumerate(first):
                if self.worth_retrying(a) and self.limits.format_retries:
                    self.counters["format_retries"] += 1
                    retry = await self._generate_valid(prompt, self.retry_params(params, 1000 + i), validate)
                    retry.attempts += 1
                    retry.tokens_spent += a.tokens_spent
                    out.append(retry)
                else:
                    if validate and not a.parsed.valid:
                        self.counters["invalid"] += 1
                    out.append(a)
            return out
        return list(await asyncio.gather(*(self._generate_valid(prompt, params.nth(i), validate) for i in range(n))))

    def vote_mode(self, requested: VoteMode) -> tuple[VoteMode, str | None]:
        """The mode a vote runs in, and why it differs from the one asked for: a format with no
        reasoning section of its own (boxed) has no work to check, so it falls back to majority."""
        if requested.checks_work and self.fmt.kind != "tags":
            return VoteMode.MAJORITY, (f"the {self.fmt.name} format has no reasoning section to check: "
                                       f"{requested.value} fell back to majority")
        return requested, None

    async def vote(self, prompt: str, params: SamplingParams, k: int, early_stop: bool,
                   mode: VoteMode = VoteMode.MAJORITY, question: str | None = None) -> VotedAnswer:
        """A vote over k samples, as one request where the backend decodes them together; once the
        leading answer cannot be overtaken (by count, or by weight in a checked vote), the remaining
        samples are cancelled. `question` grounds the numbers a checked sample's claims use."""
        mode, note = self.vote_mode(mode)
        params = self._deadlined(params)
        samples: dict[int, Answer] = {}
        checks: dict[int, WorkCheck] = {}
        tally = VoteTally(k)
        # best@k is decided by one sample's score, which a later sample can always beat: no early stop.
        early_stop = early_stop and mode is not VoteMode.BEST
        early = False
        async with self.slot():
            gen = self.backend.asamples(prompt, reasoning_params(params, self.fmt), k)
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    async for i, c in gen:
                        await self._force_answer(prompt, params, c)  # a cut sample still casts a ballot
                        samples[i] = a = self.answer_of(c, params, True)
                        ballot, weight = self.voted_answer(a), 1.0
                        if mode.checks_work:
                            checks[i] = check = check_work(a.text, question, self.fmt)
                            ballot, weight = ballot_of(mode, ballot, check)
                        if tally.add(ballot, weight=weight) and early_stop:
                            early = True
                            break
            finally:
                await gen.aclose()  # cancels whatever is still generating
        order = sorted(samples)
        ordered = [samples[i] for i in order]
        result = vote(mode, [self.voted_answer(a) for a in ordered], [a.parsed.valid for a in ordered],
                      [checks[i] for i in order] if mode.checks_work else None)
        self.counters["votes"] += 1
        self.counters["early_stops"] += early
        winner = ordered[result.winner] if result.winner is not None else None
        return VotedAnswer(winner, result, ordered, early, [checks[i] for i in order] if mode.checks_work else [], note)

    def voted_answer(self, a: Answer) -> str | None:
        """The answer a sample votes for: its extracted answer when the format holds, else none."""
        return extract_answer(a.text, self.fmt).text if a.parsed.valid else None

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Delta, None]:
        """Deltas of one completion, admitted and deadlined like any other request. A forced answer
        streams on from where the cut reasoning stopped: the tags the runtime wrote, then the answer."""
        params = self._deadlined(params)
        async with self.slot():
            last = None
            async for d in self.backend.astream(prompt, reasoning_params(params, self.fmt)):
                if d.completion is None:
                    yield d
                else:
                    last = d
            if last is None or last.completion is None:
                return
            c = last.completion
            suffix = forcing_suffix(self.fmt, params, c, params.prefix)
            if suffix is None:
                yield last
                return
            yield Delta(last.text + suffix, logprobs=last.logprobs)
            async for d in self.backend.astream(prompt + c.text + suffix, answer_params(params, self.fmt)):
                if d.completion is None:
                    yield d
                    continue
                attach_answer(c, suffix, d.completion)
                self.counters["forced_answers"] += 1
                yield Delta(d.text, c.finish_reason, c, d.logprobs)

    def status(self) -> dict[str, Any]:
        return {"queue_depth": self.waiting, "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight,
                "max_concurrency": self.backend.max_concurrency, **self.counters}
