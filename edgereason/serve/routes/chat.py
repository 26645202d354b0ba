"""POST /v1/chat/completions: format-constrained reasoning, the reasoning split, voting, streaming,
logprobs and tool calls (passed through to engines that parse them)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from edgereason.backends.base import Completion, SamplingParams, TokenLogprob
from edgereason.backends.forcing import budget_error
from edgereason.serve.engine import Answer, QueueFullError, ReasoningEngine
from edgereason.serve.errors import APIError
from edgereason.serve.grammars import json_grammar
from edgereason.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatStreamChoice,
    ChoiceLogprobs,
    DeltaMessage,
    ErrorResponse,
    SampleCheck,
    TokenLogprobModel,
    ToolCall,
    UsageInfo,
    VoteInfo,
    new_id,
    now,
)
from edgereason.serve.reasoning import ReasoningSplitter
from edgereason.serve.routes.common import (
    ClientGone,
    adapter_of,
    check_request,
    guarded,
    reasoning_tokens,
    record,
    render,
    sse,
    until_disconnected,
    usage,
)

logger = logging.getLogger("edgereason.serve")
router = APIRouter()
ENDPOINT = "/v1/chat/completions"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 502, 503, 504)
}


def _structured_grammar(req: ChatCompletionRequest) -> str:
    """The GBNF grammar of a `response_format` request: its JSON schema, or any JSON object."""
    fmt = req.response_format
    return json_grammar(fmt.json_schema.schema_ if fmt and fmt.json_schema else None)


def chat_logprobs(lps: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if lps is None:
        return None
    return ChoiceLogprobs(content=[TokenLogprobModel(**lp.to_openai()) for lp in lps])


@router.post(ENDPOINT, response_model=ChatCompletionResponse, responses={
    **_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "A completion, or its stream of chunks."}})
async def create_chat_completion(req: ChatCompletionRequest, request: Request) -> Any:
    t0 = time.perf_counter()
    engine: ReasoningEngine = request.app.state.engine
    use_tools = bool(req.tools) and req.tool_choice != "none"
    check_request(req, request, logprobs=req.logprobs_k, tools=use_tools)
    messages = [m.to_template() for m in req.messages]
    structured = req.response_format is not None and req.response_format.type != "text"
    reasoning = req.reasoning and not structured and not use_tools
    if reasoning and not any(m["role"] == "system" for m in messages):
        # The model was trained on this system prompt; clients need not know it.
        messages.insert(0, {"role": "system", "content": engine.fmt.system_prompt})
    temperature = req.voting.temperature if req.voting else req.temperature
    params = engine.params(reasoning, req.token_limit, temperature, req.top_p, req.seed, req.stops,
                           force_answer=_force_answer(req, engine, reasoning),
                           logprobs=req.logprobs_k, ignore_eos=req.ignore_eos, logit_bias=req.token_bias(),
                           frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                           adapter=adapter_of(request, req.model), grammar=_structured_grammar(req) if structured else None)
    if use_tools:
        return await _tool_call(req, request, messages, params)
    prompt = render(engine, messages, params)
    prompt_tokens, params = await guarded(engine.check_prompt(prompt, params))
    if req.stream:
        if engine.waiting >= engine.limits.max_queue and engine.in_flight >= engine.backend.max_concurrency:
            raise APIError(429, f"server busy: {engine.waiting} requests queued", "rate_limit_error", "queue_full")
        return StreamingResponse(_stream(req, request, prompt, params, reasoning, prompt_tokens),
                                 media_type="text/event-stream")
    try:
        if req.voting:
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"
                             and isinstance(m.get("content"), str)), None)
            voted = await guarded(until_disconnected(request, engine.vote(
                prompt, params, req.voting.k, req.voting.early_stop, req.voting.mode, question)))
            answers = voted.samples
            winner = voted.answer or (answers[0] if answers else None)
            if winner is None:
                raise APIError(504, "no sample finished before the deadline", "timeout_error")
            message = _message(winner, reasoning)
            if voted.vote.answer is not None:
                message.content = voted.vote.answer
            choices = [_choice(0, winner, message)]
            checks = [SampleCheck(sample=i, answer=engine.voted_answer(a), **c.to_dict())
                      for i, (a, c) in enumerate(zip(answers, voted.checks))] or None
            vote = VoteInfo(**voted.vote.to_dict(), k=req.voting.k, early_stopped=voted.early_stopped,
                            note=voted.note, checks=checks)
            request.app.state.metrics.votes.inc()
            request.app.state.metrics.early_stops.inc(int(voted.early_stopped))
        else:
            answers = await guarded(until_disconnected(request, engine.complete(prompt, params, req.n, reasoning)))
            choices = [_choice(i, a, _message(a, reasoning)) for i, a in enumerate(answers)]
            vote = None
    except ClientGone:
        return Response(status_code=499)  # nobody is listening; the generation was stopped
    record(request, answers)
    reasoning_count = await reasoning_tokens(engine, [a for a in answers if a is not None]) if reasoning else 0
    body = ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=req.model, choices=choices,
                                  usage=usage(answers, prompt_tokens, reasoning_count), voting=vote)
    request.app.state.metrics.prompt_tokens.inc(body.usage.prompt_tokens)
    request.app.state.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - t0)
    request.app.state.metrics.requests.labels(ENDPOINT, "200").inc()
    return body


def _force_answer(req: ChatCompletionRequest, engine: ReasoningEngine, reasoning: bool) -> int:
    """The request's forced-answer budget: its own, else the server's (where it leaves room to reason);
    a 400 where the request asks for one that cannot apply, rather than silently not forcing."""
    limit = req.token_limit or engine.limits.max_tokens
    has_block = reasoning and engine.fmt.kind == "tags"  # a reasoning block to close
    if req.force_answer is None:
        default = engine.limits.force_answer
        return default if has_block and default < limit else 0
    if req.force_answer and not has_block:
        off = (f"the {engine.fmt.name} format has no reasoning block" if engine.fmt.kind != "tags"
               else "this request has the reasoning format off (reasoning: false, response_format or tools)")
        raise APIError(400, f"force_answer closes a cut reasoning block, and {off}", param="force_answer")
    if (why := budget_error(req.force_answer, limit)) is not None:
        raise APIError(400, why, param="force_answer")
    return req.force_answer


def _message(a: Answer, reasoning: bool) -> AssistantMessage:
    if reasoning:
        return AssistantMessage(content=a.content, reasoning_content=a.reasoning, reasoning=a.reasoning)
    return AssistantMessage(content=a.text)


def _choice(index: int, a: Answer, message: AssistantMessage) -> ChatChoice:
    return ChatChoice(index=index, message=message, finish_reason=a.completion.finish_reason,
                      logprobs=chat_logprobs(a.completion.logprobs),
                      format_valid=a.parsed.valid if a.validated else None,
                      format_errors=a.parsed.describe_errors() if a.validated else [], attempts=a.attempts,
                      answer_forced=a.completion.forced_answer_tokens is not None or None)


async def _tool_call(req: ChatCompletionRequest, request: Request, messages: list[dict[str, Any]],
                     params: SamplingParams) -> ChatCompletionResponse:
    """Tools go to the engine's own chat endpoint, whose template and parser handle tool calls."""
    engine: ReasoningEngine = request.app.state.engine
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]

    async def call() -> list[Completion]:
        async with engine.slot():
            return await engine.backend.achat_tools(messages, params, tools, req.tool_choice)

    completions = await guarded(call())
    choices = []
    for i, c in enumerate(completions):
        calls = [ToolCall(**tc) for tc in c.tool_calls] if c.tool_calls else None
        finish = "tool_calls" if calls else c.finish_reason
        choices.append(ChatChoice(index=i, message=AssistantMessage(content=c.text or None, tool_calls=calls),
                                  finish_reason=finish))
    prompt = max((c.prompt_tokens for c in completions), default=0)
    generated = sum(c.completion_tokens for c in completions)
    request.app.state.metrics.requests.labels(ENDPOINT, "200").inc()
    return ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=req.model, choices=choices,
                                  usage=UsageInfo(prompt_tokens=prompt, completion_tokens=generated,
                                                  total_tokens=prompt + generated))


async def _stream(req: ChatCompletionRequest, request: Request, prompt: str, params: SamplingParams,
                  reasoning: bool, prompt_tokens: int) -> AsyncIterator[str]:
    engine: ReasoningEngine = request.app.state.engine
    metrics = request.app.state.metrics
    cid, created = new_id("chatcmpl"), now()

    def chunk(delta: DeltaMessage, finish: str | None = None, **extra: Any) -> str:
        choice = ChatStreamChoice(index=0, delta=delta, finish_reason=finish, **extra)
        return sse(ChatCompletionChunk(id=cid, created=created, model=req.model, choices=[choice]))

    def pieces(parts: list[tuple[str, str]]) -> list[str]:
        return [chunk(DeltaMessage(reasoning_content=t, reasoning=t) if kind == "reasoning" else DeltaMessage(content=t))
                for kind, t in parts]

    t0 = time.perf_counter()
    splitter = ReasoningSplitter(engine.fmt) if reasoning and engine.fmt.kind == "tags" else None
    yield chunk(DeltaMessage(role="assistant", content=""))
    final: Completion | None = None
    first = True
    try:
        if splitter is not None and params.prefix:
            for event in pieces(splitter.feed(params.prefix)):
                yield event
        async for d in engine.stream(prompt, params):
            if d.completion is not None:
                final = d.completion
            if not d.text:
                continue
            if first:
                metrics.ttft.observe(time.perf_counter() - t0)
                first = False
            logprobs = chat_logprobs(d.logprobs)
            if splitter is None:
                yield chunk(DeltaMessage(content=d.text), logprobs=logprobs)
                continue
            for event in pieces(splitter.feed(d.text)):
                yield event
        if splitter is not None:
            for event in pieces(splitter.flush()):
                yield event
    except Exception as e:  # headers are sent: the error travels as an event, then the stream ends
        kind = "rate_limit_error" if isinstance(e, QueueFullError) else "server_error"
        if kind == "server_error":
            logger.exception("stream failed")
        yield sse({"error": {"message": f"{type(e).__name__}: {e}", "type": kind, "code": None, "param": None}})
        yield "data: [DONE]\n\n"
        return
    answer = engine.answer_of(final, params, reasoning) if final is not None else None
    extra = {"format_valid": answer.parsed.valid} if answer is not None and reasoning else {}
    if answer is not None and answer.completion.forced_answer_tokens is not None:
        extra["answer_forced"] = True
    yield chunk(DeltaMessage(), final.finish_reason if final else "length", **extra)
    if req.stream_options and req.stream_options.include_usage and answer is not None:
        count = await reasoning_tokens(engine, [answer]) if reasoning else 0
        use = usage([answer], prompt_tokens, count)
        yield sse(ChatCompletionChunk(id=cid, created=created, model=req.model, choices=[], usage=use))
    if answer is not None:
        record(request, [answer])
    metrics.requests.labels(ENDPOINT, "200").inc()
    yield "data: [DONE]\n\n"
