"""GET /health (engine status; 503 while the engine cannot serve) and GET /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgereason.serve.engine import ReasoningEngine
from edgereason.serve.protocol import HealthResponse

router = APIRouter()


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(request: Request) -> Any:
    engine: ReasoningEngine = request.app.state.engine
    facts = engine.backend.health()
    body = HealthResponse(status="ok", model=request.app.state.model_id, **{**facts, **engine.status()})
    replicas = facts.get("replicas")
    if replicas is not None and not any(r["healthy"] for r in replicas):
        body.status = "no healthy upstream"
        return JSONResponse(body.model_dump(), status_code=503)
    if facts.get("ready") is False:
        body.status = "engine restarting"
        return JSONResponse(body.model_dump(), status_code=503)
    return body


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    m = request.app.state.metrics
    engine: ReasoningEngine = request.app.state.engine
    m.queue.set(engine.waiting)
    m.in_flight.set(engine.in_flight)
    m.peak_in_flight.set(engine.peak_in_flight)
    return PlainTextResponse(generate_latest(m.registry).decode(), media_type=CONTENT_TYPE_LATEST)
