"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edgereason.serve.errors import APIError
from edgereason.serve.protocol import ErrorResponse, ModelCard, ModelList

router = APIRouter()


def _card(request: Request, model_id: str) -> ModelCard:
    """The base, or one of the named LoRAs on it (`parent`: the base, as vLLM lists LoRA modules)."""
    state = request.app.state
    files = getattr(state.engine.backend, "files", {}) or {}
    adapter = model_id != state.model_id
    return ModelCard(id=model_id, created=state.created, max_model_len=state.engine.backend.context_length,
                     root=(files.get("adapters") or {}).get(model_id) if adapter else state.model_root,
                     parent=state.model_id if adapter else None, format=state.engine.fmt.name)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    state = request.app.state
    return ModelList(data=[_card(request, m) for m in (state.model_id, *state.adapters)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, request: Request) -> ModelCard:
    state = request.app.state
    if model_id not in (state.model_id, *state.adapters):
        served = ", ".join(repr(m) for m in (state.model_id, *state.adapters))
        raise APIError(404, f"model {model_id!r} not found; this server has {served}", "not_found_error",
                       "model_not_found", "model")
    return _card(request, model_id)
