"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's names and bodies), mounted with
`--allow-adapter-updates`: named adapters join or leave the served base without restarting the
server. The engine drains first (requests in flight finish, new ones wait in the queue), then the
backend takes the new set; llama-server is restarted on the same base, which takes seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from edgereason.backends.base import Capability
from edgereason.serve.adapters import AdapterError, check_adapter
from edgereason.serve.errors import APIError
from edgereason.serve.protocol import ErrorResponse, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

router = APIRouter()


def _adapters(request: Request) -> dict[str, str]:
    """The backend's current named adapters (it is the one source: the model list follows it)."""
    backend = request.app.state.engine.backend
    if Capability.MULTI_ADAPTER not in backend.supports:
        raise APIError(400, f"the {backend.name} backend serves no named adapters", param="lora_name")
    return dict(backend.files.get("adapters") or {})


async def _apply(request: Request, adapters: dict[str, str | Path]) -> None:
    state = request.app.state
    async with state.engine.exclusive():  # the requests in flight finish on the old set first
        await asyncio.to_thread(state.engine.backend.set_adapters, adapters)
    state.adapters = list(adapters)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, responses={400: {"model": ErrorResponse}})
async def load_lora_adapter(req: LoadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    state = request.app.state
    current = _adapters(request)
    if req.lora_name == state.model_id or req.lora_name in current:
        raise APIError(400, f"The lora adapter '{req.lora_name}' has already been loaded.", param="lora_name")
    try:
        path = check_adapter(req.lora_name, req.lora_path, state.config)
    except AdapterError as e:
        raise APIError(400, str(e), param="lora_path") from e
    await _apply(request, {**current, req.lora_name: path})
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, responses={404: {"model": ErrorResponse}})
async def unload_lora_adapter(req: UnloadLoRAAdapterRequest, request: Request) -> PlainTextResponse:
    current = _adapters(request)
    if req.lora_name not in current:
        raise APIError(404, f"The lora adapter '{req.lora_name}' cannot be found.", "not_found_error", "model_not_found",
                       "lora_name")
    del current[req.lora_name]
    await _apply(request, dict(current))
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")
