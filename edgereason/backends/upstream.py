"""A gateway over OpenAI-compatible replicas (vLLM, llama-server, another edgereason): generation
runs there; the format, validation and voting stay in this server.

Prompts are rendered here with the model's own chat template, so the format prefill works with any
upstream (`OpenAIBackend` with a template). Each replica takes up to `per_replica` requests at once;
a request goes to the least busy healthy replica (or round-robin), so concurrent clients spread over
the cluster. A background check of `/health` (or `/v1/models`) marks replicas up and down; a replica
that fails a request is skipped until it answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import httpx

from edgereason.backends.base import Backend, BackendError, BackendRejected, Completion, Delta, Messages, SamplingParams
from edgereason.backends.chat_template import ChatTemplate
from edgereason.backends.openai_client import OpenAIBackend
from edgereason.models import resolve_model

T = TypeVar("T")
# How often a request waiting for a free replica slot looks again (no loop-bound primitive to share).
_POLL_S = 0.02


class UpstreamError(BackendError):
    """No upstream replica could serve the request (HTTP 502)."""


class Replica:
    def __init__(self, backend: OpenAIBackend, limit: int) -> None:
        self.backend = backend
        self.url = backend.url
        self.healthy = True
        self.in_flight = 0
        self.served = 0
        self.failures = 0
        self.limit = limit


class UpstreamBackend(Backend):
    name = "upstream"
    parallel_samples = True

    def __init__(self, urls: list[str], model: str, upstream_model: str | None = None,
                 policy: Literal["round_robin", "least_busy"] = "least_busy", api_key: str | None = None,
                 per_replica: int = 8, health_interval_s: float = 5.0, timeout_s: float = 300.0) -> None:
        super().__init__()
        if not urls:
            raise ValueError("the upstream backend needs at least one --upstream URL")
        resolved = resolve_model(model)
        self.model_name = resolved.name
        self.format = resolved.format
        # The template and tokenizer come from the model's GGUF metadata (no weights loaded).
        gguf = resolved.require_gguf()
        self.template = ChatTemplate.from_gguf_file(gguf, resolved.chat_template)
        self._gguf = gguf
        self._vocab: Any = None
        self.context_length = None  # each upstream enforces its own
        self.replicas = [Replica(OpenAIBackend(u, upstream_model or resolved.name, api_key=api_key, concurrency=per_replica,
                                               timeout_s=timeout_s, template=self.template), per_replica) for u in urls]
        self.max_concurrency = per_replica * len(self.replicas)
        self.policy = policy
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probe = httpx.Client(timeout=3, headers=self.replicas[0].backend.http.headers)
        self._checker = threading.Thread(target=self._health_loop, args=(health_interval_s,), daemon=True)
        self._checker.start()

    # ---- replica choice and health ----------------------------------------------------------
    def _pick(self, exclude: set[str]) -> Replica | None:
        """A healthy replica with a free slot (None if all are busy); raises when none is healthy."""
        with self._lock:
            live = [r for r in self.replicas if r.healthy and r.url not in exclude]
            if not live:
                raise UpstreamError(f"no healthy upstream replica ({', '.join(r.url for r in self.replicas)})")
            free = [r for r in live if r.in_flight < r.limit]
            if not free:
                return None
            if self.policy == "round_robin":
                replica = free[next(self._rr) % len(free)]
            else:
                replica = min(free, key=lambda r: (r.in_flight, r.served))
            replica.in_flight += 1
            return replica

    def check_health(self) -> None:
        for r in self.replicas:
            try:
                ok = self._probe.get(f"{r.url}/health").status_code == 200
                if not ok:
                    ok = self._probe.get(f"{r.url}/v1/models").status_code == 200
            except httpx.HTTPError:
                ok = False
            with self._lock:
                r.healthy = ok

    def _health_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_health()

    def status(self) -> list[dict[str, Any]]:
        return [{"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "limit": r.limit,
                 "served": r.served, "failures": r.failures} for r in self.replicas]

    def health(self) -> dict[str, Any]:
        return {**super().health(), "replicas": self.status()}

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        return self.template.render(messages, tools) + prefix

    def count_tokens(self, text: str) -> int:
        if self._vocab is None:
            from llama_cpp import Llama

            self._vocab = Llama(model_path=str(self._gguf), vocab_only=True, verbose=False)
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=True))

    # ---- generation ---------------------------------------------------------------------------
    def _failed(self, replica: Replica, error: Exception) -> str:
        with self._lock:
            replica.failures += 1
            replica.healthy = False  # until the health check sees it again
        return f"{replica.url}: {error}"

    async def _on_replica(self, call: Callable[[OpenAIBackend], Awaitable[T]]) -> T:
        """Run `call` on a free healthy replica, failing over to the others."""
        tried: set[str] = set()
        last = ""
        while len(tried) < len(self.replicas):
            replica = self._pick(tried)
            if replica is None:  # every healthy replica is at its limit: wait for one to free up
                await asyncio.sleep(_POLL_S)
                continue
            tried.add(replica.url)
            try:
                result = await call(replica.backend)
            except BackendRejected:
                raise  # the request is at fault, not the replica
            except BackendError as e:
                last = self._failed(replica, e)
                continue
            finally:
                with self._lock:
                    replica.in_flight -= 1
            with self._lock:
                replica.served += 1
            return result
        raise UpstreamError(f"every upstream replica failed; last: {last}")

    async def acomplete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        return await self._on_replica(lambda b: b.acomplete(prompt, params))

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        tried: set[str] = set()
        while True:
            replica = self._pick(tried)
            if replica is None:
                await asyncio.sleep(_POLL_S)
                continue
            tried.add(replica.url)
            started = False
            try:
                async for d in replica.backend.astream(prompt, params):
                    started = True
                    yield d
                with self._lock:
                    replica.served += 1
                return
            except BackendRejected:
                raise
            except BackendError as e:
                last = self._failed(replica, e)
                if started or len(tried) == len(self.replicas):  # text already sent cannot be retried elsewhere
                    raise UpstreamError(f"upstream failed mid-stream; last: {last}") from None
            finally:
                with self._lock:
                    replica.in_flight -= 1

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        async def run() -> list[list[Completion]]:
            return list(await asyncio.gather(*(self.acomplete(p, params) for p in prompts)))

        return asyncio.run(run())

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        raise NotImplementedError("stream from upstream replicas with astream()")

    def close(self) -> None:
        self._stop.set()
        self._probe.close()
        for r in self.replicas:
            r.backend.close()
        if self._vocab is not None:
            self._vocab.close()

