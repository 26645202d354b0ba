"""A real edgereason server on 127.0.0.1 in a background thread (shared by the serve, eval and demo
tests). Settings are ServeConfig fields, sections as dicts: Server(limits={"max_tokens": 64})."""

from typing import Any

from edgereason.serve.app import build_app, serve_in_thread
from edgereason.serve.config import ServeConfig
from edgereason.servers import free_port

__all__ = ["Server", "free_port"]


class Server:
    def __init__(self, **cfg: Any) -> None:
        self.config = ServeConfig.model_validate(cfg)
        self.app = build_app(self.config)
        self.threaded = serve_in_thread(self.app)
        self.port = self.threaded.port
        self.base = self.threaded.base

    @property
    def engine(self):
        return self.app.state.engine

    def stop(self) -> None:
        self.threaded.stop()
