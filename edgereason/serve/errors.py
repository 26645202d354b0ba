"""OpenAI-shaped errors: one exception type for the routes, and the handlers that turn every failure
into `{"error": {...}}` with the right status. A 500 is logged with its traceback; no input should
reach one (the tests fuzz for it)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgereason.serve.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("edgereason.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


def _count(request: Request, status: int) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.requests.labels(request.url.path, str(status)).inc()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str | None]:
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {}
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown field {loc!r}: this server does not recognise it", loc or None, "unknown_field"
    if kind == "json_invalid" or first.get("loc", ()) == ("body",):
        return f"the body is not valid JSON for this endpoint: {first.get('msg', 'invalid')}", None, "invalid_json"
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return (f"{loc}: {msg}" if loc else msg), loc or None, None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        _count(request, exc.status)
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        _count(request, 400)
        message, param, code = _validation_message(exc)
        return error_response(400, message, "invalid_request_error", code, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        _count(request, exc.status_code)
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # last resort, logged in full
        logger.exception("internal error on %s %s", request.method, request.url.path)
        _count(request, 500)
        return error_response(500, f"internal error: {type(exc).__name__} (logged on the server)", "server_error")
