"""Front a cluster: generation on upstream OpenAI-compatible servers (vLLM, llama-server, another
edgereason), with the format, validation and voting done here.

Prompts are rendered here with the model's own chat template (so the format prefill works with any
upstream) and sent to `/v1/completions`. The format grammar travels as `grammar` (llama-server and
edgereason) and `structured_outputs.grammar` (vLLM); an upstream that ignores both is still covered
by validation and retries. Replicas are picked round-robin or least-busy; a background thread
checks `/health` (or `/v1/models`) and a replica that fails is skipped until it answers again.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx

from edgereason.models import resolve_model
from serve.backends.base import Backend, Completion, Messages, SamplingParams


class UpstreamError(RuntimeError):
    """No upstream replica could serve the request."""


class Replica:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.healthy = True
        self.in_flight = 0
        self.served = 0
        self.failures = 0


class UpstreamBackend(Backend):
    name = "upstream"
    parallel_samples = True

    def __init__(self, urls: list[str], model: str, upstream_model: str | None = None,
                 policy: Literal["round_robin", "least_busy"] = "least_busy", api_key: str | None = None,
                 health_interval_s: float = 5.0, timeout_s: float = 300.0) -> None:
        if not urls:
            raise ValueError("the upstream backend needs at least one --upstream URL")
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        resolved = resolve_model(model)
        self.model_name = resolved.name
        self.format = resolved.format
        self.upstream_model = upstream_model or resolved.name
        # The template and tokenizer come from the model's GGUF (vocabulary only, no weights).
        self._vocab = Llama(model_path=str(resolved.require_gguf()), vocab_only=True, verbose=False)
        template = self._vocab.metadata.get("tokenizer.chat_template") or resolved.chat_template
        self.formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
        self.context_length = None  # the upstream enforces its own
        self.replicas = [Replica(u) for u in urls]
        self.policy = policy
        self._rr = itertools.count()
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(timeout=timeout_s, headers=headers)
        self._stop = threading.Event()
        self._checker = threading.Thread(target=self._health_loop, args=(health_interval_s,), daemon=True)
        self._checker.start()

    # ---- replica choice and health ----------------------------------------------------------
    def _pick(self, exclude: set[str]) -> Replica:
        with self._lock:
            live = [r for r in self.replicas if r.healthy and r.url not in exclude]
            if not live:
                raise UpstreamError(f"no healthy upstream replica ({', '.join(r.url for r in self.replicas)})")
            if self.policy == "round_robin":
                replica = live[next(self._rr) % len(live)]
            else:
                replica = min(live, key=lambda r: (r.in_flight, r.served))
            replica.in_flight += 1
            return replica

    def check_health(self) -> None:
        for r in self.replicas:
            try:
                ok = self.http.get(f"{r.url}/health", timeout=3).status_code == 200
                if not ok:
                    ok = self.http.get(f"{r.url}/v1/models", timeout=3).status_code == 200
            except httpx.HTTPError:
                ok = False
            with self._lock:
                r.healthy = ok

    def _health_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_health()

    def status(self) -> list[dict]:
        return [{"url": r.url, "healthy": r.healthy, "in_flight": r.in_flight, "served": r.served,
                 "failures": r.failures} for r in self.replicas]

    # ---- generation ---------------------------------------------------------------------------
    def render(self, messages: Messages, prefix: str = "") -> str:
        return self.formatter(messages=messages).prompt + prefix

    def count_tokens(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=True))

    def _one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        body = {"model": self.upstream_model, "prompt": prompt, "max_tokens": params.max_tokens, "n": params.n,
                "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
                "stop": params.stop or None}
        if params.grammar:
            body["grammar"] = params.grammar
            body["structured_outputs"] = {"grammar": params.grammar}
        tried: set[str] = set()
        last = ""
        while len(tried) < len(self.replicas):
            replica = self._pick(tried)
            tried.add(replica.url)
            t0 = time.perf_counter()
            try:
                resp = self.http.post(f"{replica.url}/v1/completions", json=body)
                if resp.status_code >= 500:
                    raise httpx.HTTPStatusError(f"HTTP {resp.status_code}", request=resp.request, response=resp)
                resp.raise_for_status()
            except httpx.HTTPError as e:
                last = f"{replica.url}: {e}"
                with self._lock:
                    replica.failures += 1
                    if not isinstance(e, httpx.HTTPStatusError) or e.response.status_code >= 500:
                        replica.healthy = False  # until the health check sees it again
                continue
            finally:
                with self._lock:
                    replica.in_flight -= 1
            with self._lock:
                replica.served += 1
            data = resp.json()
            usage = data.get("usage") or {}
            per = max(1, len(data["choices"]))
            return [Completion(c["text"], usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0) // per,
                               c.get("finish_reason") or "stop", time.perf_counter() - t0) for c in data["choices"]]
        raise UpstreamError(f"every upstream replica failed; last: {last}")

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(max(1, min(len(prompts), 8))) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def close(self) -> None:
        self._stop.set()
        self.http.close()
        self._vocab.close()
