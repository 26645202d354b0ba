"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from edgereason.serve.errors import APIError
from edgereason.serve.protocol import ErrorResponse, ModelCard, ModelList

router = APIRouter()


def _card(request: Request) -> ModelCard:
    state = request.app.state
    return ModelCard(id=state.model_id, created=state.created, root=state.model_root,
                     max_model_len=state.engine.backend.context_length)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(request)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
async def get_model(model_id: str, request: Request) -> ModelCard:
    if model_id != request.app.state.model_id:
        raise APIError(404, f"model {model_id!r} not found; this server has {request.app.state.model_id!r}",
                       "not_found_error", "model_not_found", "model")
    return _card(request)
