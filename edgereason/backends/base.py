"""The interface every generation backend implements.

A backend renders chat messages with the model's own template (`render`) and generates from raw
prompts. Two ways to call it, one implementation underneath:

- `complete` / `chat` / `stream`: blocking, for batch jobs (eval, bench, training rollouts);
- `acomplete` / `astream`: awaitable, for the server. Engines that are asynchronous themselves
  (llama-server, vLLM, upstream replicas) override these and run requests concurrently; the
  default runs the blocking call in a worker thread, one at a time (`max_concurrency == 1`),
  because in-process engines (llama-cpp-python, transformers) are not thread-safe.

Stopping: `SamplingParams.deadline` and `SamplingParams.cancel` are checked by every engine while it
generates, so a timed-out request or a disconnected client frees the engine instead of running on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

Messages = list[dict[str, Any]]


class Capability(StrEnum):
    """An optional request feature an engine carries out; the server refuses the others with a 400."""

    LOGPROBS = "logprobs"  #: token log-probabilities (and top alternatives)
    TOOLS = "tools"  #: OpenAI tool calls, parsed by the engine
    PENALTIES = "penalties"  #: frequency and presence penalties
    LOGIT_BIAS = "logit_bias"  #: per-token logit bias
    GRAMMAR = "grammar"  #: constrained decoding (GBNF grammar, JSON schema)
    MULTI_ADAPTER = "multi_adapter"  #: several LoRA adapters on one base, chosen per request

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings, recorded with every eval result (`to_dict`). Frozen: one request's settings
    are shared by its samples, retries and the engine's threads, so a change is a copy (`replace`),
    never an edit another holder would see."""

    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF, for engines that constrain decoding
    prefix: str = ""  # starts the assistant turn (e.g. a format's prefill); included in chat text
    logprobs: int | None = None  # None: off; k >= 0: the sampled token's logprob and the top k
    ignore_eos: bool = False  # keep generating past end-of-sequence (length tests, benchmarks)
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit
    frequency_penalty: float = 0.0  # engines with "penalties" in `supports`
    presence_penalty: float = 0.0
    deadline: float | None = None  # time.monotonic() after which generation stops (server timeouts)
    cancel: threading.Event | None = None  # set when the caller gave up (a client disconnected)
    adapter: str | None = None  # the named LoRA to decode with, on a server holding several (None: the base)
    # Tokens of max_tokens kept for a forced answer (0 = off; backends.forcing).
    force_answer: int = 0

    def to_dict(self) -> dict[str, Any]:
        # unset options are left out, so settings recorded before they existed still match
        skip = ("grammar", "deadline", "cancel", "logit_bias", *(("adapter",) if self.adapter is None else ()),
                *(("force_answer",) if not self.force_answer else ()))
        return {k: v for k, v in self.__dict__.items() if k not in skip} | {"constrained": self.grammar is not None}

    def should_stop(self) -> bool:
        """True once the deadline passed or the caller cancelled: engines poll this per token."""
        if self.cancel is not None and self.cancel.is_set():
            return True
        return self.deadline is not None and time.monotonic() > self.deadline

    def nth(self, i: int) -> SamplingParams:
        """A copy for the i-th sample of a request: its own seed, so samples differ but the request
        stays reproducible."""
        return replace(self, n=1, seed=None if self.seed is None else self.seed + i)


@dataclass
class TokenLogprob:
    """One generated token with its logprob and the most likely alternatives (OpenAI's shape)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_openai(self) -> dict[str, Any]:
        def entry(tok: str, lp: float) -> dict[str, Any]:
            return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8", errors="replace"))}

        return {**entry(self.token, self.logprob), "top_logprobs": [entry(t, lp) for t, lp in self.top]}


@dataclass
class Completion:
    """One generated completion with its token counts and timings."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "tool_calls"
    latency_s: float
    ttft_s: float | None = None
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int | None = None  # prompt tokens served from the engine's prompt cache
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI-shaped, when the engine parsed a tool call
    # Tokens generated after the runtime opened the answer block of a completion that ended without
    # one (backends.forcing);
    # None when nothing was forced. `text` then holds the tags the runtime wrote, and
    # `completion_tokens` counts only what the model generated.
    forced_answer_tokens: int | None = None


@dataclass
class Delta:
    """A piece of a streamed completion. The last event of a stream has `finish_reason` set and
    carries the whole `completion` (text, usage, timings)."""

    text: str
    finish_reason: str | None = None
    completion: Completion | None = None
    logprobs: list[TokenLogprob] | None = None


class BackendError(RuntimeError):
    """The engine failed or cannot be reached; the message says which and why (HTTP 502)."""


class BackendUnavailable(BackendError):
    """The engine is (re)starting or overloaded: retry shortly (HTTP 503)."""


class BackendRejected(BackendError):
    """The engine refused the request as invalid (a grammar it cannot parse, ...): the client's
    problem, reported with the engine's own message (HTTP 400)."""


class Backend(ABC):
    """Generation over one loaded model."""

    name: ClassVar[str] = "backend"
    model_name: str = ""
    format: str | None = None  # the reasoning format an export manifest recorded, if any
    context_length: int | None = None  # tokens per sequence, prompt included
    # True when `complete` with params.n > 1 decodes the n samples together (cheaper than n calls).
    parallel_samples: bool = False
    # Requests the engine runs at once. 1 = the default async wrappers serialise calls.
    max_concurrency: int = 1

    @property
    def renders_prompts(self) -> bool:
        """Whether `render` works: false for a server that applies its own chat template, which takes
        conversations only (then a cut completion cannot be continued from its raw prompt)."""
        return True

    @property
    def supports(self) -> frozenset[Capability]:
        """The optional request features this engine carries out (the server refuses the others with a
        400), as its registry entry declares them (`edgereason.backends.BACKENDS`)."""
        from edgereason.backends import capabilities_of  # the registry imports this module

        return capabilities_of(self.name)

    def __init__(self) -> None:
        self._serial = threading.Lock()

    # ---- rendering -----------------------------------------------------------------------------
    @abstractmethod
    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for `messages` with the assistant turn opened (and `prefix` after it)."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as this engine tokenizes a prompt (special tokens parsed)."""

    # ---- blocking ------------------------------------------------------------------------------
    @abstractmethod
    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """For each raw prompt, `params.n` completions of the text that follows it."""

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        """For each conversation, `params.n` assistant completions, `params.prefix` included."""
        results = self.complete([self.render(m, params.prefix) for m in batch], params)
        for row in results:
            for c in row:
                c.text = restore_closing_tag(params.prefix + c.text, params.stop, c.finish_reason)
        return results

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        """Deltas of one completion of a raw prompt. Engines that can stream token by token
        override this; the default yields the whole completion at once."""
        (c,) = self.complete([prompt], replace(params, n=1))[0]
        yield Delta(c.text, c.finish_reason, c, c.logprobs)

    # ---- awaitable (the server) ---------------------------------------------------------------
    async def acomplete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """`params.n` completions of one raw prompt, without blocking the event loop."""
        params = _with_cancel(params)
        try:
            return await asyncio.to_thread(self._serialised, lambda: self.complete([prompt], params)[0])
        except asyncio.CancelledError:
            params.cancel.set()  # type: ignore[union-attr]  # the worker thread stops at its next token
            raise

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        """Deltas of one completion; the default runs `stream` in a worker thread."""
        params = _with_cancel(params)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        def produce() -> None:
            try:
                for d in self._stream_serialised(prompt, params):
                    loop.call_soon_threadsafe(queue.put_nowait, d)
            except BaseException as e:  # noqa: BLE001  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        worker = loop.run_in_executor(None, produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            params.cancel.set()  # type: ignore[union-attr]  # a consumer that stops early stops the engine
            await asyncio.shield(worker)

    def _stream_serialised(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        if self.max_concurrency > 1:
            yield from self.stream(prompt, params)
            return
        with self._serial:
            yield from self.stream(prompt, params)

    def _serialised(self, fn: Callable[[], T]) -> T:
        if self.max_concurrency > 1:
            return fn()
        with self._serial:
            return fn()

    async def asamples(self, prompt: str, params: SamplingParams, k: int) -> AsyncGenerator[tuple[int, Completion], None]:
        """k samples of one prompt, each yielded as (index, completion) when it finishes. Closing the
        iterator early cancels the samples still running (early-stopped votes).

        Engines that decode samples together get one n=k call (nothing to stop early); the others
        run k single-sample calls as their concurrency allows, sample i seeded `params.nth(i)`."""
        if self.parallel_samples:
            for i, c in enumerate(await self.acomplete(prompt, replace(params, n=k))):
                yield i, c
            return
        gate = asyncio.Semaphore(max(1, self.max_concurrency))  # FIFO: samples start in index order

        async def one(i: int) -> list[Completion]:
            async with gate:
                return await self.acomplete(prompt, params.nth(i))

        tasks = {asyncio.ensure_future(one(i)): i for i in range(k)}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in sorted(done, key=lambda t: tasks[t]):
                    yield tasks[t], t.result()[0]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def achat_tools(self, messages: Messages, params: SamplingParams, tools: list[dict[str, Any]],
                          tool_choice: Any) -> list[Completion]:
        """A chat request with tools, answered by the engine's own tool-call parser. Only engines
        with "tools" in `supports` implement it; the server refuses tools for the others."""
        raise NotImplementedError(f"the {self.name} backend does not parse tool calls")

    # ---- lifecycle -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Engine facts for the server's /health (overridden by engines with more to say)."""
        return {"backend": self.name, "max_concurrency": self.max_concurrency}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""


def _with_cancel(params: SamplingParams) -> SamplingParams:
    return params if params.cancel is not None else replace(params, cancel=threading.Event())


def restore_closing_tag(text: str, stops: list[str], finish_reason: str) -> str:
    """Engines drop (llama.cpp) or keep (transformers) the stop string they matched. A closing tag
    belongs to the format, so put it back when the text opened that block but never closed it."""
    if finish_reason != "stop":
        return text
    for close_tag in stops:
        if close_tag.startswith("</") and close_tag.replace("</", "<", 1) in text and close_tag not in text:
            return text.rstrip() + "\n" + close_tag
    return text


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`: streamed text that
    may be the start of a stop string or a format tag, held back until it is clearly not one."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
