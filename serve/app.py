"""The OpenAI-compatible HTTP layer: a thin protocol adapter over `ReasoningEngine`.

Every error is an OpenAI-style body with the right status; no input reaches a 500.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import iterate_in_threadpool

from serve.backends.base import restore_closing_tag
from serve.backends.upstream_backend import UpstreamError
from serve.engine import Answer, PromptTooLongError, QueueFullError, ReasoningEngine, ReasoningSplitter
from serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    error_body,
    new_id,
    now,
)


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgereason_requests_total", "Requests", ["endpoint", "status"], registry=self.registry)
        self.tokens = Counter("edgereason_generated_tokens_total", "Generated tokens", registry=self.registry)
        self.latency = Histogram("edgereason_request_seconds", "Request latency", ["endpoint"], registry=self.registry)
        self.ttft = Histogram("edgereason_ttft_seconds", "Time to first token (streaming)", registry=self.registry)
        self.tps = Gauge("edgereason_tokens_per_second", "Tokens/s of the last completion", registry=self.registry)
        self.queue = Gauge("edgereason_queue_depth", "Requests waiting for a slot", registry=self.registry)
        self.votes = Counter("edgereason_votes_total", "Majority votes", registry=self.registry)
        self.invalid = Counter("edgereason_format_invalid_total", "Completions failing format validation", registry=self.registry)


def create_app(engine: ReasoningEngine, model_id: str, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="edgereason", version="0.1.0")
    metrics = Metrics()
    limits = engine.limits

    def fail(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, type_, code), status_code=status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else first.get("msg", "invalid request")
        metrics.requests.labels(request.url.path, "400").inc()
        return JSONResponse(error_body(message, "invalid_request_error", None, loc or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return fail(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # last resort: never a bare 500 page
        metrics.requests.labels(request.url.path, "500").inc()
        return fail(500, f"internal error: {type(exc).__name__}", "server_error")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                metrics.requests.labels(request.url.path, "401").inc()
                return fail(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
        return await call_next(request)

    def check(req: SamplingFields) -> None:
        if req.model not in (model_id, "default"):
            raise APIError(404, f"model {req.model!r} not found; this server has {model_id!r}", "not_found_error", "model_not_found", "model")
        if req.token_limit and req.token_limit > limits.max_tokens:
            raise APIError(400, f"max_tokens {req.token_limit} exceeds this server's limit {limits.max_tokens}", param="max_tokens")
        if req.n > limits.max_n:
            raise APIError(400, f"n {req.n} exceeds this server's limit {limits.max_n}", param="n")
        if req.voting and req.voting.k > limits.max_k:
            raise APIError(400, f"voting.k {req.voting.k} exceeds this server's limit {limits.max_k}", param="voting.k")
        if req.stream and (req.n > 1 or req.voting):
            raise APIError(400, "stream=true supports a single completion (no n > 1, no voting)", param="stream")

    async def guarded(coro):
        try:
            return await coro
        except QueueFullError as e:
            raise APIError(429, str(e), "rate_limit_error", "queue_full") from None
        except PromptTooLongError as e:
            raise APIError(400, str(e), code="context_length_exceeded", param="messages") from None
        except TimeoutError:
            raise APIError(504, f"generation exceeded {limits.timeout_s:.0f} s", "timeout_error") from None
        except UpstreamError as e:
            raise APIError(502, str(e), "upstream_error", "upstream_unavailable") from None

    def message_of(a: Answer, reasoning: bool) -> dict[str, Any]:
        if reasoning:
            return {"role": "assistant", "content": a.content, "reasoning_content": a.reasoning}
        return {"role": "assistant", "content": a.text}

    def usage(answers: list[Answer]) -> dict[str, int]:
        prompt = answers[0].completion.prompt_tokens if answers else 0
        completion = sum(a.completion.completion_tokens for a in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def record(answers: list[Answer]) -> None:
        for a in answers:
            metrics.tokens.inc(a.completion.completion_tokens)
            if a.completion.latency_s > 0:
                metrics.tps.set(a.completion.completion_tokens / a.completion.latency_s)
            if not a.parsed.valid:
                metrics.invalid.inc()

    @app.get("/health")
    async def health():
        body = {"status": "ok", "model": model_id, "backend": engine.backend.name, "queue_depth": engine.queue_depth}
        replicas = getattr(engine.backend, "status", None)
        if replicas is not None:  # a gateway: healthy while one upstream replica is
            body["replicas"] = replicas()
            if not any(r["healthy"] for r in body["replicas"]):
                return JSONResponse({**body, "status": "no healthy upstream"}, status_code=503)
        return body

    @app.get("/metrics")
    async def prometheus():
        metrics.queue.set(engine.queue_depth)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": now(), "owned_by": "edgereason"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        t0 = time.perf_counter()
        check(req)
        messages = [m.model_dump() for m in req.messages]
        messages = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
        reasoning = req.reasoning and req.response_format is None
        if reasoning and not any(m["role"] == "system" for m in messages):
            # The model was trained on this system prompt; clients need not know it.
            messages.insert(0, {"role": "system", "content": engine.fmt.system_prompt})
        if req.voting:
            params = engine.params(reasoning, req.token_limit, req.voting.temperature, req.top_p, req.seed, req.stops)
            voted = await guarded(engine.vote(messages, params, req.voting.k, req.voting.early_stop))
            record(voted.samples)
            metrics.votes.inc()
            winner = voted.answer or voted.samples[0]
            body = _chat_body(req.model, [message_of(winner, reasoning)], [winner], usage(voted.samples))
            body["choices"][0]["message"]["content"] = voted.vote.answer if voted.vote.answer is not None else winner.content
            body["voting"] = {**voted.vote.to_dict(), "k": req.voting.k, "early_stopped": voted.early_stopped}
        else:
            params = engine.params(reasoning, req.token_limit, req.temperature, req.top_p, req.seed, req.stops)
            if req.response_format is not None and req.response_format.type != "text":
                params.grammar = _json_grammar(req.response_format.json_schema)
            if req.stream:
                return _stream_chat(req, messages, params, reasoning)
            answers = await guarded(engine.complete(messages, params, req.n, validate=reasoning))
            record(answers)
            body = _chat_body(req.model, [message_of(a, reasoning) for a in answers], answers, usage(answers))
        metrics.latency.labels("/v1/chat/completions").observe(time.perf_counter() - t0)
        metrics.requests.labels("/v1/chat/completions", "200").inc()
        return body

    def _chat_body(model: str, messages: list[dict], answers: list[Answer], use: dict) -> dict[str, Any]:
        return {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [
                {"index": i, "message": m, "finish_reason": a.completion.finish_reason, "format_valid": a.parsed.valid,
                 "format_errors": a.parsed.describe_errors(), "attempts": a.attempts}
                for i, (m, a) in enumerate(zip(messages, answers))
            ],
            "usage": use,
        }

    def _stream_chat(req: ChatCompletionRequest, messages, params, reasoning: bool) -> StreamingResponse:
        cid, created = new_id("chatcmpl"), now()
        try:
            engine.check_prompt(messages, params)
        except PromptTooLongError as e:
            raise APIError(400, str(e), code="context_length_exceeded", param="messages") from None

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
            return f"data: {json.dumps(body)}\n\n"

        def events():
            t0 = time.perf_counter()
            first = True
            splitter = ReasoningSplitter(engine.fmt) if reasoning and engine.fmt.kind == "tags" else None
            yield chunk({"role": "assistant", "content": ""})
            full = ""
            for delta in engine.stream(messages, params):
                full += delta
                if first:
                    metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                if splitter is None:
                    yield chunk({"content": delta})
                    continue
                for kind, text in splitter.feed(delta):
                    yield chunk({"reasoning_content": text} if kind == "reasoning" else {"content": text})
            # The last chunk says whether the whole completion passed format validation.
            valid = engine.fmt.parse(restore_closing_tag(full, params.stop, "stop")).valid if reasoning else None
            yield chunk({}, "stop", **({"format_valid": valid} if valid is not None else {}))
            yield "data: [DONE]\n\n"
            metrics.requests.labels("/v1/chat/completions", "200").inc()

        return StreamingResponse(iterate_in_threadpool(events()), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check(req)
        params = engine.params(False, req.token_limit, req.temperature, req.top_p, req.seed, req.stops)
        params.grammar = _checked_grammar(req.grammar or (req.structured_outputs or {}).get("grammar"))
        answers = await guarded(engine.complete(req.prompt, params, req.n, validate=False))
        record(answers)
        metrics.requests.labels("/v1/completions", "200").inc()
        return {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": req.model,
            "choices": [{"index": i, "text": a.text, "finish_reason": a.completion.finish_reason} for i, a in enumerate(answers)],
            "usage": usage(answers),
        }

    return app


def _checked_grammar(gbnf: str | None) -> str | None:
    """A client-supplied GBNF grammar, compiled once here so a bad one is a 400, not a failed generation."""
    if not gbnf:
        return None
    from llama_cpp import LlamaGrammar

    try:
        LlamaGrammar.from_string(gbnf, verbose=False)
    except Exception as e:
        raise APIError(400, f"grammar cannot be parsed: {str(e)[:200] or type(e).__name__}", param="grammar") from None
    return gbnf


def _json_grammar(json_schema: dict[str, Any] | None) -> str:
    """A GBNF grammar for response_format: the given JSON schema, or any JSON object."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    schema = (json_schema or {}).get("schema")
    if not schema:
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # an unsupported schema is the client's problem, not a 500
        raise APIError(400, f"response_format.json_schema cannot be compiled: {e}", param="response_format") from None
