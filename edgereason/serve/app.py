"""The FastAPI application: routers from `routes/`, the engine and metrics in `app.state`.

`build_app(cfg)` loads the backend a `ServeConfig` names and wraps it; `create_app(engine, ...)`
wraps an engine that already exists (tests use it with the scripted backend). `serve_in_thread`
runs an app with uvicorn on a background thread (the demo and the tests).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware

from edgereason import __version__
from edgereason.backends import Backend, create_backend
from edgereason.formats import get_format
from edgereason.serve.adapters import check_adapter
from edgereason.serve.config import ServeConfig
from edgereason.serve.engine import ReasoningEngine
from edgereason.serve.errors import error_response, install_error_handlers
from edgereason.serve.metrics import Metrics
from edgereason.serve.routes import adapters as adapter_routes
from edgereason.serve.routes import chat, completions, health, models
from edgereason.servers import free_port

logger = logging.getLogger("edgereason.serve")


def _llama_server(cfg: ServeConfig) -> Backend:
    return create_backend("llama-server", cfg.model, adapter=cfg.single_adapter, slots=cfg.llama_cpp.slots,
                          adapters={n: check_adapter(n, p, cfg) for n, p in cfg.named_adapters.items()} or None,
                          ctx_per_slot=cfg.llama_cpp.ctx_per_slot, threads=cfg.threads,
                          served_name=cfg.served_model_name, prompt_cache=cfg.llama_cpp.prompt_cache,
                          gpu_layers=cfg.llama_cpp.gpu_layers, poll=cfg.llama_cpp.poll)


def _vllm(cfg: ServeConfig) -> Backend:
    return create_backend("vllm", cfg.model, adapter=cfg.single_adapter, serving=True, n_ctx=cfg.vllm.max_model_len,
                          tensor_parallel_size=cfg.vllm.tensor_parallel_size,
                          gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
                          adapters={n: check_adapter(n, p, cfg) for n, p in cfg.named_adapters.items()} or None,
                          enable_lora=cfg.allow_adapter_updates)


def _upstream(cfg: ServeConfig) -> Backend:
    u = cfg.upstream
    return create_backend("upstream", u.urls, cfg.model, upstream_model=u.model, policy=u.policy,
                          api_key=u.api_key, per_replica=u.per_replica, timeout_s=cfg.limits.timeout_s)


#: How a ServeConfig's sections become each built-in engine's arguments, by registry name.
_FACTORIES: dict[str, Callable[[ServeConfig], Backend]] = {
    "llama-server": _llama_server,
    "vllm": _vllm,
    "transformers": lambda cfg: create_backend("transformers", cfg.model, adapter=cfg.single_adapter, threads=cfg.threads),
    "openvino": lambda cfg: create_backend("openvino", cfg.model, device=cfg.openvino.device, threads=cfg.threads),
    "upstream": _upstream,
    "scripted": lambda cfg: create_backend("scripted", model_name=cfg.served_model_name or "scripted"),
}


def load_backend(cfg: ServeConfig) -> Backend:
    """The engine a ServeConfig names, loaded (llama.cpp means a managed llama-server). A backend
    registered from outside gets the model and `backend_options`."""
    name = cfg.backend_name
    factory = _FACTORIES.get(name)
    if factory is not None:
        return factory(cfg)
    return create_backend(name, cfg.model, **cfg.backend_options)


def create_app(engine: ReasoningEngine, model_id: str, *, api_key: str | None = None,
               cors_origins: list[str] | None = None, root: str | None = None,
               adapters: list[str] | None = None, config: ServeConfig | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.backend.close()  # stops a managed llama-server with the app

    app = FastAPI(title="edgereason", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible reasoning server: format-constrained generation, the reasoning "
                  "split (reasoning_content), majority voting (`voting`), format validation.")
    app.state.engine = engine
    app.state.model_id = model_id
    app.state.model_root = root
    app.state.adapters = list(adapters or [])  # model ids of the named LoRAs on the base
    app.state.config = config  # what the adapter routes check a new adapter against
    app.state.metrics = Metrics()
    app.state.created = int(time.time())
    install_error_handlers(app)
    for module in (chat, completions, models, health):
        app.include_router(module.router)
    if config is not None and config.allow_adapter_updates:
        app.include_router(adapter_routes.router)

    key = api_key or os.environ.get("EDGEREASON_API_KEY")

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if key and request.url.path.startswith("/v1/") and request.method != "OPTIONS":
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                app.state.metrics.requests.labels(request.url.path, "401").inc()
                return error_response(401, "invalid or missing API key", "authentication_error", "invalid_api_key")
        return await call_next(request)

    if cors_origins:  # added last, so it runs first: preflights and error responses carry the headers too
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["*"], allow_credentials="*" not in cors_origins)
    return app


def build_app(cfg: ServeConfig) -> FastAPI:
    """Load the backend a ServeConfig names and wrap it in the HTTP app."""
    backend = load_backend(cfg)
    fmt = get_format(cfg.format or backend.format)
    engine = ReasoningEngine(backend, fmt, cfg.limits)
    return create_app(engine, cfg.served_model_name or backend.model_name, api_key=cfg.api_key,
                      cors_origins=cfg.cors_origins, root=cfg.model, adapters=list(cfg.named_adapters), config=cfg)


@dataclass
class ThreadedServer:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_in_thread(app: FastAPI, port: int | None = None, startup_timeout_s: float = 120) -> ThreadedServer:
    """Run `app` on 127.0.0.1 in a daemon thread; returns once it accepts connections."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"the server on port {port} did not start")
    return ThreadedServer(server, thread, port)
