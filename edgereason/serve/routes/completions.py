"""POST /v1/completions: raw text completion (no reasoning format), streaming, logprobs and GBNF
grammars, so this server can itself be a replica behind another edgereason gateway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from edgereason.backends.base import Completion, SamplingParams, TokenLogprob
from edgereason.serve.engine import QueueFullError, ReasoningEngine
from edgereason.serve.errors import APIError
from edgereason.serve.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    new_id,
    now,
)
from edgereason.serve.routes.common import ClientGone, adapter_of, check_request, guarded, record, sse, until_disconnected, usage

router = APIRouter()
ENDPOINT = "/v1/completions"


def completion_logprobs(lps: list[TokenLogprob] | None, offset: int = 0) -> CompletionLogprobs | None:
    if lps is None:
        return None
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return CompletionLogprobs(tokens=[lp.token for lp in lps], token_logprobs=[lp.logprob for lp in lps],
                              top_logprobs=[dict(lp.top) for lp in lps], text_offset=offsets)


@router.post(ENDPOINT, response_model=CompletionResponse, responses={
    **{code: {"model": ErrorResponse} for code in (400, 401, 404, 429, 502, 503, 504)},
    200: {"content": {"text/event-stream": {}}, "description": "A completion, or its stream of chunks."}})
async def create_completion(req: CompletionRequest, request: Request) -> Any:
    t0 = time.perf_counter()
    engine: ReasoningEngine = request.app.state.engine
    check_request(req, request, logprobs=req.logprobs_k)
    params = engine.params(False, req.token_limit, req.temperature, req.top_p, req.seed, req.stops,
                           logprobs=req.logprobs_k, ignore_eos=req.ignore_eos, logit_bias=req.token_bias(),
                           frequency_penalty=req.frequency_penalty, presence_penalty=req.presence_penalty,
                           adapter=adapter_of(request, req.model),
                           grammar=req.grammar or (req.structured_outputs or {}).get("grammar") or None)
    prompt = str(req.prompt)
    prompt_tokens, params = await guarded(engine.check_prompt(prompt, params))
    if req.stream:
        if engine.waiting >= engine.limits.max_queue and engine.in_flight >= engine.backend.max_concurrency:
            raise APIError(429, f"server busy: {engine.waiting} requests queued", "rate_limit_error", "queue_full")
        return StreamingResponse(_stream(req, request, prompt, params, prompt_tokens), media_type="text/event-stream")
    try:
        answers = await guarded(until_disconnected(request, engine.complete(prompt, params, req.n, validate=False)))
    except ClientGone:
        return Response(status_code=499)
    record(request, answers)
    request.app.state.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - t0)
    request.app.state.metrics.requests.labels(ENDPOINT, "200").inc()
    return CompletionResponse(
        id=new_id("cmpl"), created=now(), model=req.model, usage=usage(answers, prompt_tokens),
        choices=[CompletionChoice(index=i, text=a.text, finish_reason=a.completion.finish_reason,
                                  logprobs=completion_logprobs(a.completion.logprobs)) for i, a in enumerate(answers)])


async def _stream(req: CompletionRequest, request: Request, prompt: str, params: SamplingParams,
                  prompt_tokens: int) -> AsyncIterator[str]:
    engine: ReasoningEngine = request.app.state.engine
    cid, created = new_id("cmpl"), now()
    final: Completion | None = None
    offset = 0
    t0 = time.perf_counter()

    def chunk(text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None) -> str:
        choice = CompletionChoice(index=0, text=text, finish_reason=finish, logprobs=logprobs)
        return sse(CompletionResponse(id=cid, created=created, model=req.model, choices=[choice]))

    try:
        async for d in engine.stream(prompt, params):
            if d.completion is not None:
                final = d.completion
            if d.text:
                if offset == 0:
                    request.app.state.metrics.ttft.observe(time.perf_counter() - t0)
                yield chunk(d.text, logprobs=completion_logprobs(d.logprobs, offset))
                offset += len(d.text)
    except Exception as e:  # noqa: BLE001  # headers are sent: any error travels as an event, never a cut stream
        kind = "rate_limit_error" if isinstance(e, QueueFullError) else "server_error"
        yield sse({"error": {"message": f"{type(e).__name__}: {e}", "type": kind, "code": None, "param": None}})
        yield "data: [DONE]\n\n"
        return
    yield chunk("", final.finish_reason if final else "length")
    if final is not None:
        answer = engine.answer_of(final, params, False)
        record(request, [answer])
        if req.stream_options and req.stream_options.include_usage:
            yield sse(CompletionResponse(id=cid, created=created, model=req.model, choices=[],
                                         usage=usage([answer], prompt_tokens)))
    request.app.state.metrics.requests.labels(ENDPOINT, "200").inc()
    yield "data: [DONE]\n\n"
