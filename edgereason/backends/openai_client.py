"""An OpenAI-compatible HTTP server as a backend: another edgereason, vLLM, llama-server, Ollama.

Two ways to use one:
- with a local `ChatTemplate` (the upstream gateway): prompts are rendered here, so a format
  prefill can follow the assistant turn, and sent to `/v1/completions` with the grammar as
  `grammar` (llama-server, edgereason) and `structured_outputs.grammar` (vLLM);
- without one (eval against a server URL): conversations go to `/v1/chat/completions` as they are.
  An edgereason server answers with the reasoning split (`reasoning_content`), which is put back
  together here so the completion is graded the same way as any other backend's.

Servers that ignore `n` (llama-cpp-python's server, Ollama) return fewer choices than asked; the
shortfall is made up with further requests, so a vote of k samples always has k samples.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import httpx

from edgereason.backends.base import (
    Backend,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    Completion,
    Delta,
    Messages,
    SamplingParams,
    TokenLogprob,
    restore_closing_tag,
)
from edgereason.backends.chat_template import ChatTemplate, TemplateError
from edgereason.formats import ReasoningFormat, get_format

_FINISH = {"stop", "length", "tool_calls", "content_filter"}


class OpenAIBackend(Backend):
    name = "openai"
    parallel_samples = True

    def __init__(self, url: str, model: str = "", *, api_key: str | None = None, concurrency: int = 4,
                 timeout_s: float = 600.0, template: ChatTemplate | None = None,
                 reasoning_format: ReasoningFormat | str | None = None) -> None:
        super().__init__()
        self.url = url.rstrip("/").removesuffix("/v1")
        key = api_key or os.environ.get("EDGEREASON_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(timeout=timeout_s, headers=headers)
        self.ahttp = httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self.template = template
        self.fmt = get_format(reasoning_format)
        self.max_concurrency = concurrency
        self.model_name = model
        self.upstream_model = model
        self.extra_body: dict[str, Any] = {}  # engine-specific request fields (see LlamaServerBackend)

    # ---- discovery -----------------------------------------------------------------------------
    def served_models(self) -> list[str]:
        try:
            r = self.http.get(f"{self.url}/v1/models", timeout=10)
            r.raise_for_status()
            return [m["id"] for m in r.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError) as e:
            raise BackendError(f"server {self.url}/v1 is not reachable: {type(e).__name__}: {e}") from None

    def connect(self) -> OpenAIBackend:
        """Check the server answers and serves the model (its first one when none was named)."""
        served = self.served_models()
        if self.model_name and self.model_name not in served:
            raise LookupError(f"server {self.url}/v1 does not serve {self.model_name!r}; it serves {', '.join(served)}")
        self.model_name = self.upstream_model = self.model_name or served[0]
        return self

    # ---- rendering -----------------------------------------------------------------------------
    @property
    def renders_prompts(self) -> bool:
        return self.template is not None

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        if self.template is None:
            raise TemplateError(f"{self.url} renders its own prompts; send conversations with chat()")
        return self.template.render(messages, tools) + prefix

    def count_tokens(self, text: str) -> int:
        try:
            r = self.http.post(f"{self.url}/tokenize", json={"content": text, "add_special": False})
        except httpx.HTTPError as e:
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise BackendError(f"{self.url} cannot count tokens (no /tokenize endpoint)")
        return len(r.json()["tokens"])

    # ---- request bodies and responses --------------------------------------------------------
    async def samples_body(self, k: int) -> dict[str, Any]:
        """Fields an n=k request adds for this server (none for a plain OpenAI server)."""
        return {}

    def completion_body(self, prompt: str, params: SamplingParams, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.upstream_model, "prompt": prompt, "max_tokens": params.max_tokens,
                                "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                                "seed": params.seed, "stop": params.stop or None, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if params.grammar:
            body["grammar"] = params.grammar
            body["structured_outputs"] = {"grammar": params.grammar}
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        if params.ignore_eos:
            body["ignore_eos"] = True
        if params.frequency_penalty or params.presence_penalty:
            body["frequency_penalty"], body["presence_penalty"] = params.frequency_penalty, params.presence_penalty
        if params.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
        return {**body, **self.extra_body}

    def _chat_body(self, messages: Messages, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_name, "messages": messages, "max_tokens": params.max_tokens,
                                "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                                "seed": params.seed, "reasoning": params.grammar is not None}
        if params.stop:
            body["stop"] = params.stop
        return body

    @staticmethod
    def _usage(data: dict[str, Any], choices: int) -> tuple[int, int, int | None]:
        usage = data.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0) // max(1, choices), cached

    def _completions(self, data: dict[str, Any], latency: float) -> list[Completion]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        prompt, per_choice, cached = self._usage(data, len(choices))
        return [Completion(c.get("text") or "", prompt, per_choice, _finish(c.get("finish_reason")), latency,
                           logprobs=_logprobs(c.get("logprobs")), cached_tokens=cached) for c in choices]

    def _chat_completions(self, data: dict[str, Any], latency: float) -> list[Completion]:
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        prompt, per_choice, cached = self._usage(data, len(choices))
        out = []
        for c in choices:
            msg = c.get("message") or {}
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content", msg.get("reasoning"))
            if reasoning is not None:  # an edgereason server split the completion: rebuild it for grading
                text = self.fmt.render(reasoning, text) if c.get("format_valid", True) else f"{reasoning}\n{text}"
            out.append(Completion(text, prompt, per_choice, _finish(c.get("finish_reason")), latency,
                                  cached_tokens=cached, tool_calls=msg.get("tool_calls")))
        return out

    def _check(self, r: httpx.Response) -> dict[str, Any]:
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            if r.status_code in (400, 413, 422):
                raise BackendRejected(f"the engine refused the request: {message}")
            kind = BackendUnavailable if r.status_code in (429, 503) else BackendError
            raise kind(f"{self.url} answered HTTP {r.status_code}: {message}")
        return r.json()

    # ---- blocking ------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            r = self.http.post(f"{self.url}{path}", json=body)
        except httpx.HTTPError as e:
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from None
        return self._check(r), time.perf_counter() - t0

    async def _apost(self, path: str, body: dict[str, Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            r = await self.ahttp.post(f"{self.url}{path}", json=body)
        except httpx.HTTPError as e:
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from None
        return self._check(r), time.perf_counter() - t0

    def _still_needed(self, params: SamplingParams, out: list[Completion], got: list[Completion] | None) -> SamplingParams | None:
        """The request for the choices still missing (None when all n are in). A server that ignores
        `n` returns fewer: the shortfall is asked for again, seeds continuing where they stopped."""
        if got is not None:
            if not got:
                raise BackendError(f"{self.url} returned no choices")
            out += got
        if len(out) >= params.n:
            return None
        return replace(params, n=params.n - len(out), seed=_offset(params.seed, len(out)))

    def _complete_one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        p = self._still_needed(params, out, None)
        while p is not None:
            data, latency = self._post("/v1/completions", self.completion_body(prompt, p))
            p = self._still_needed(params, out, self._completions(data, latency))
        return out[: params.n]

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(max(1, min(len(prompts), self.max_concurrency))) as pool:
            return list(pool.map(lambda p: self._complete_one(p, params), prompts))

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        if self.template is not None:
            return super().chat(batch, params)

        def one(messages: Messages) -> list[Completion]:
            out: list[Completion] = []
            p = self._still_needed(params, out, None)
            while p is not None:
                data, latency = self._post("/v1/chat/completions", self._chat_body(messages, p))
                p = self._still_needed(params, out, self._chat_completions(data, latency))
            return out[: params.n]

        with ThreadPoolExecutor(max(1, min(len(batch), self.max_concurrency))) as pool:
            results = list(pool.map(one, batch))
        for row in results:
            for c in row:
                c.text = restore_closing_tag(c.text, params.stop, c.finish_reason)
        return results

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        raise NotImplementedError("stream from an OpenAI server with astream()")

    # ---- awaitable -----------------------------------------------------------------------------
    async def acomplete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        p = self._still_needed(params, out, None)
        while p is not None:
            data, latency = await self._apost("/v1/completions", self.completion_body(prompt, p))
            p = self._still_needed(params, out, self._completions(data, latency))
        return out[: params.n]

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        t0 = time.perf_counter()
        ttft: float | None = None
        text, finish, n_tokens, usage = "", None, 0, None
        logprobs: list[TokenLogprob] = []
        try:
            async with self.ahttp.stream("POST", f"{self.url}/v1/completions",
                                         json=self.completion_body(prompt, replace(params, n=1), stream=True)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._check(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    data = json.loads(payload)
                    usage = data.get("usage") or usage
                    for c in data.get("choices") or []:
                        piece = c.get("text") or ""
                        lps = _logprobs(c.get("logprobs"))
                        finish = c.get("finish_reason") or finish
                        if piece:
                            ttft = ttft if ttft is not None else time.perf_counter() - t0
                            n_tokens += 1
                            text += piece
                            logprobs += lps or []
                            yield Delta(piece, logprobs=lps)
        except (httpx.HTTPError, json.JSONDecodeError) as e:  # a truncated event: the stream was cut
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from e
        prompt_tokens, completion_tokens, cached = self._usage({"usage": usage}, 1) if usage else (0, n_tokens, None)
        done = Completion(text, prompt_tokens, completion_tokens or n_tokens, _finish(finish), time.perf_counter() - t0,
                          ttft, logprobs or None, cached)
        yield Delta("", done.finish_reason, done)

    async def asamples(self, prompt: str, params: SamplingParams, k: int) -> AsyncGenerator[tuple[int, Completion], None]:
        """k samples as one streamed n=k request (the server evaluates the prompt once); each sample
        is yielded when its choice finishes, and closing early closes the stream, which stops the
        rest on the server. Choices a server did not return (it ignores n) are made up one by one."""
        t0 = time.perf_counter()
        texts: dict[int, str] = {}
        counts: dict[int, int] = {}
        finished: set[int] = set()
        body = {**self.completion_body(prompt, replace(params, n=k), stream=True), **await self.samples_body(k)}
        try:
            async with self.ahttp.stream("POST", f"{self.url}/v1/completions", json=body) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._check(r)
                async for line in r.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    data = json.loads(line[5:])
                    for c in data.get("choices") or []:
                        i = int(c.get("index", 0))
                        if i in finished or i >= k:
                            continue
                        piece = c.get("text") or ""
                        texts[i] = texts.get(i, "") + piece
                        counts[i] = counts.get(i, 0) + (1 if piece else 0)
                        if c.get("finish_reason"):
                            finished.add(i)
                            # llama-server closes each choice with that choice's own usage; text chunks
                            # undercount (a held-back stop string or partial UTF-8 is a token without text).
                            n_prompt, tokens, cached = (self._usage(data, 1) if data.get("usage")
                                                        else (0, counts[i], None))
                            yield i, Completion(texts[i], n_prompt, tokens, _finish(c["finish_reason"]),
                                                time.perf_counter() - t0, cached_tokens=cached)
        except (httpx.HTTPError, json.JSONDecodeError) as e:  # a truncated event: the stream was cut
            raise BackendError(f"{self.url}: {type(e).__name__}: {e}") from e
        for i in range(k):
            if i not in finished:
                (c,) = await self.acomplete(prompt, params.nth(i))
                yield i, c

    def close(self) -> None:
        self.http.close()
        try:
            asyncio.get_running_loop().create_task(self.ahttp.aclose())
        except RuntimeError:
            asyncio.run(self.ahttp.aclose())


def _offset(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + 1000 * i


def _finish(reason: str | None) -> str:
    return reason if reason in _FINISH else "stop"


def _logprobs(data: Any) -> list[TokenLogprob] | None:
    """OpenAI chat-style `logprobs.content` or completions-style `tokens/token_logprobs/top_logprobs`."""
    if not data:
        return None
    if isinstance(data, dict) and "content" in data:
        return [TokenLogprob(e["token"], e["logprob"], [(t["token"], t["logprob"]) for t in e.get("top_logprobs") or []])
                for e in data["content"] or []]
    if isinstance(data, dict) and "tokens" in data:
        tops = data.get("top_logprobs") or [None] * len(data["tokens"])
        return [TokenLogprob(t, lp, sorted((top or {}).items(), key=lambda kv: -kv[1]))
                for t, lp, top in zip(data["tokens"], data.get("token_logprobs") or [], tops)]
    return None
