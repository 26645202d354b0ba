"""What the chat and completions routes share: request checks, error mapping, cancellation when the
client disconnects, usage accounting and server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from edgereason.backends.base import BackendError, BackendRejected, BackendUnavailable, Capability
from edgereason.backends.chat_template import TemplateError
from edgereason.backends.upstream import UpstreamError
from edgereason.serve.engine import Answer, PromptTooLongError, QueueFullError, ReasoningEngine
from edgereason.serve.errors import APIError
from edgereason.serve.protocol import (
    CompletionTokensDetails,
    PromptTokensDetails,
    SamplingFields,
    UsageInfo,
)

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected; its generation was cancelled and nobody reads the response."""


def check_request(req: SamplingFields, request: Request, logprobs: int | None = None, tools: bool = False) -> None:
    """Refuse, with a 4xx naming the field, whatever this server or its engine cannot carry out."""
    state = request.app.state
    engine: ReasoningEngine = state.engine
    limits = engine.limits
    if req.model not in (state.model_id, "default", *state.adapters):
        served = ", ".join(repr(m) for m in (state.model_id, *state.adapters))
        raise APIError(404, f"model {req.model!r} not found; this server has {served}", "not_found_error",
                       "model_not_found", "model")
    for name in req.unsupported():
        raise APIError(400, f"{name} is not supported by this server", code="unsupported_field", param=name)
    if req.token_limit and req.token_limit > limits.max_tokens:
        raise APIError(400, f"max_tokens {req.token_limit} exceeds this server's limit {limits.max_tokens}",
                       param="max_tokens")
    if req.n > limits.max_n:
        raise APIError(400, f"n {req.n} exceeds this server's limit {limits.max_n}", param="n")
    if req.voting and req.voting.k > limits.max_k:
        raise APIError(400, f"voting.k {req.voting.k} exceeds this server's limit {limits.max_k}", param="voting.k")
    if req.voting and req.n > 1:
        raise APIError(400, "voting returns one answer: leave n at 1", param="n")
    if req.stream and (req.n > 1 or req.voting):
        raise APIError(400, "stream=true streams a single completion: for n > 1 or voting, send stream=false "
                       "(the demo streams one sample per request and tallies the vote itself)", param="stream")
    supports = engine.backend.supports
    if logprobs is not None and Capability.LOGPROBS not in supports:
        raise APIError(400, f"logprobs are not available from the {engine.backend.name} backend", param="logprobs")
    if (req.frequency_penalty or req.presence_penalty) and Capability.PENALTIES not in supports:
        param = "frequency_penalty" if req.frequency_penalty else "presence_penalty"
        raise APIError(400, f"{param} is not available from the {engine.backend.name} backend", param=param)
    if getattr(req, "logit_bias", None) and Capability.LOGIT_BIAS not in supports:
        raise APIError(400, f"logit_bias is not available from the {engine.backend.name} backend", param="logit_bias")
    grammar = getattr(req, "grammar", None) or (getattr(req, "structured_outputs", None) or {}).get("grammar")
    structured = getattr(req, "response_format", None) is not None and req.response_format.type != "text"  # type: ignore[attr-defined]
    if (grammar or structured) and Capability.GRAMMAR not in supports:
        param = "grammar" if grammar else "response_format"
        raise APIError(400, f"constrained decoding ({param}) is not available from the {engine.backend.name} backend",
                       param=param)
    if tools and Capability.TOOLS not in supports:
        raise APIError(400, f"tools are not available from the {engine.backend.name} backend (serve with "
                       "--backend llama.cpp for tool calls)", param="tools")
    choice, listed = getattr(req, "tool_choice", None), getattr(req, "tools", None) or []
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if named not in {t.function.name for t in listed}:
            raise APIError(400, f"tool_choice names the function {named!r}, which is not among `tools`", param="tool_choice")
    elif choice == "required" and not listed:
        raise APIError(400, "tool_choice 'required' needs `tools`", param="tool_choice")


async def guarded(coro: Awaitable[T]) -> T:
    """Engine failures as OpenAI errors: 429 queue full, 400 context, 504 timeout, 502/503 engine."""
    try:
        return await coro
    except QueueFullError as e:
        raise APIError(429, str(e), "rate_limit_error", "queue_full") from None
    except PromptTooLongError as e:
        raise APIError(400, str(e), code="context_length_exceeded", param="messages") from None
    except TemplateError as e:
        raise APIError(400, str(e), code="invalid_messages", param="messages") from None
    except TimeoutError:
        raise APIError(504, "generation exceeded the server's deadline", "timeout_error") from None
    except BackendRejected as e:
        raise APIError(400, str(e), code="rejected_by_engine") from None
    except BackendUnavailable as e:
        raise APIError(503, str(e), "service_unavailable", "engine_unavailable") from None
    except (UpstreamError, BackendError) as e:
        raise APIError(502, str(e), "upstream_error", "upstream_unavailable") from None


def render(engine: ReasoningEngine, messages: list[dict[str, Any]], params: Any) -> str:
    """The prompt for a conversation; a conversation the chat template refuses is a 400."""
    try:
        return engine.render(messages, params)
    except TemplateError as e:
        raise APIError(400, str(e), code="invalid_messages", param="messages") from None


async def until_disconnected(request: Request, coro: Awaitable[T]) -> T:
    """Run `coro`; if the client disconnects first, cancel it (which stops the generation in the
    engine) and raise ClientGone."""
    task = asyncio.ensure_future(coro)

    async def listen() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(listen())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        request.app.state.engine.counters["cancelled"] += 1
        request.app.state.metrics.cancelled.inc()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def reasoning_tokens(engine: ReasoningEngine, answers: Sequence[Answer]) -> int:
    """Tokens of the reasoning parts (what `completion_tokens_details.reasoning_tokens` reports)."""
    texts = [a.reasoning for a in answers if a.reasoning]
    if not texts:
        return 0
    try:
        counts = await asyncio.gather(*(asyncio.to_thread(engine.backend.count_tokens, t) for t in texts))
    except (BackendError, NotImplementedError):
        return 0
    return int(sum(counts))


def usage(answers: Sequence[Answer], prompt_tokens: int, reasoning: int | None = None) -> UsageInfo:
    """Every generated token is counted: all choices, all vote samples, every format retry."""
    prompt = max(prompt_tokens, max((a.completion.prompt_tokens for a in answers), default=0))
    completion = sum(a.tokens_spent for a in answers)
    cached = [a.completion.cached_tokens for a in answers if a.completion.cached_tokens is not None]
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning) if reasoning is not None else None,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=max(cached)) if cached else None,
    )


def record(request: Request, answers: Sequence[Answer]) -> None:
    m = request.app.state.metrics
    engine: ReasoningEngine = request.app.state.engine
    for a in answers:
        m.tokens.inc(a.tokens_spent)
        if a.completion.latency_s > 0:
            m.tps.set(a.completion.completion_tokens / a.completion.latency_s)
        if a.validated and not a.parsed.valid:
            m.invalid.inc()
        if a.attempts > 1:
            m.retries.inc(a.attempts - 1)
    m.peak_in_flight.set(engine.peak_in_flight)


def sse(event: BaseModel | dict[str, Any]) -> str:
    """One server-sent event without null fields, except `finish_reason`, which OpenAI sends as null
    on every chunk but a choice's last."""
    data = event.model_dump(mode="json", exclude_none=True) if isinstance(event, BaseModel) else event
    for choice in data.get("choices") or []:
        choice.setdefault("finish_reason", None)
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def adapter_of(request: Request, model: str) -> str | None:
    """The named LoRA a request's `model` chooses (None: the base)."""
    return model if model in request.app.state.adapters else None
