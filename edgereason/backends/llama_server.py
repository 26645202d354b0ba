"""llama.cpp's own HTTP server (`llama-server`) as a managed child process: the edge serving engine.

llama-server runs `slots` sequences with continuous batching, evaluates a prompt once for the `n`
completions of a request (`n_cmpl`, children seeded seed+1, seed+2, ...), caches prompts, applies a
GBNF grammar and a seed per request, and stops a request whose client has gone. This backend starts
it on a free loopback port (with the model's chat template, threads, context per slot and an
optional GGUF LoRA), waits for its health, restarts it when it dies (requests meanwhile get
`BackendUnavailable`, HTTP 503) and stops it on exit. Prompts are rendered by edgereason, so the
format prefill follows the assistant turn exactly; requests go to llama-server's `/v1/completions`.
Requests carrying `tools` go to its `/v1/chat/completions`, where its Jinja templates parse tool calls
(templates that cannot render tools get the generic JSON convention of `backends/tool_calls.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from edgereason.backends import tool_calls
from edgereason.backends.base import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    Completion,
    Delta,
    Messages,
    SamplingParams,
)
from edgereason.backends.chat_template import SETUP_VARIABLE, ChatTemplate
from edgereason.backends.openai_client import OpenAIBackend
from edgereason.cpu import default_threads
from edgereason.gguf_meta import gguf_info
from edgereason.models import resolve_model
from edgereason.native import tool
from edgereason.paths import cache_dir
from edgereason.servers import ManagedProcess, free_port

# Sampling defaults of the other engines: plain temperature and top-p (llama-server's own defaults
# add top-k 40 and min-p 0.05, which would make its samples differ from everyone else's). Sampling
# from the whole vocabulary costs llama-server 10-18% of its tokens/s at 1-16 clients on 2 cores.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "cache_prompt": True}
# llama-server's --poll (how hard idle threads spin for work; llama.cpp's own default is 50): 0 costs
# nothing on an idle CPU here and was 1.5x faster beside a busy core (docs/measurements.md).
DEFAULT_POLL = 0

logger = logging.getLogger("edgereason.backends")


class LlamaServerBackend(OpenAIBackend):
    name = "llama-server"

    def __init__(self, model: str, *, adapter: str | Path | None = None, slots: int = 4,
                 ctx_per_slot: int | None = None, threads: int | None = None, startup_timeout_s: float = 180.0,
                 served_name: str | None = None, extra_args: list[str] | None = None, prompt_cache: bool = True,
                 gpu_layers: str | int | None = "auto", adapters: dict[str, str | Path] | None = None,
                 poll: int = DEFAULT_POLL) -> None:
        from edgereason.gpu_layers import offload_report, parse_gpu_layers, warn_if_unsupported

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        adapter = adapter if adapter is not None else resolved.adapter  # an export that chose base + LoRA
        info = gguf_info(gguf)
        trained = info.get("context_length") or 4096
        # The context per sequence is capped at the model's trained context unless asked for more.
        self.ctx_per_slot = ctx_per_slot or min(trained, 4096)
        template = ChatTemplate.from_gguf_file(gguf, resolved.chat_template)
        port = free_port()
        name = served_name or resolved.name
        threads = default_threads(threads)
        cmd = [str(tool("llama-server")), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               # One KV stream per slot: a unified cache makes every sequence's attention span every slot's cells,
               # which cost maj@16 about 11% and raw batched decode 10-30% here (llama-batched-bench -kvu).
               "--alias", name, "--parallel", str(slots), "--no-kv-unified", "--ctx-size", str(slots * self.ctx_per_slot),
               "--threads", str(threads), "--threads-batch", str(threads), "--metrics", "--slots", "--no-webui",
               "--jinja", "--n-gpu-layers", parse_gpu_layers(gpu_layers)]
        cmd += ["--poll", str(poll)]
        warn_if_unsupported(gpu_layers, logger.warning)
        self.gpu_offload = offload_report(gpu_layers)
        if not info.get("chat_template") and resolved.chat_template:  # e.g. Gemma 3 270M's GGUF has none
            tpl = cache_dir() / "templates" / f"{resolved.name}.jinja"
            tpl.parent.mkdir(parents=True, exist_ok=True)
            tpl.write_text(resolved.chat_template, encoding="utf-8")
            cmd += ["--chat-template-file", str(tpl)]
        if adapter is not None and adapters:
            raise ValueError("one adapter applied to every request, or several chosen by name: not both")
        if adapter is not None:
            cmd += self._lora_args([adapter])
        self._base_cmd, self._extra_args = cmd, list(extra_args or [])
        self._startup_timeout_s, self._port = startup_timeout_s, port
        self.files: dict[str, Any] = {"model": str(gguf), "lora": str(adapter) if adapter is not None else None, "adapters": {}}
        self.adapter_ids: dict[str, int] = {}
        self.process = self._launch(dict(adapters or {}))
        super().__init__(f"http://127.0.0.1:{port}", name, concurrency=slots, template=template)
        self.model_name = name
        self.format = resolved.format
        self.context_length = self.ctx_per_slot
        self.slots = slots
        self.extra_body = {**PLAIN_SAMPLING, "cache_prompt": prompt_cache}

    # ---- adapters ------------------------------------------------------------------------------
    @staticmethod
    def _lora_args(paths: list[str | Path]) -> list[str]:
        for path in paths:
            if Path(path).suffix != ".gguf":
                raise ValueError(f"llama-server takes a GGUF LoRA (export one with `edgereason export gguf`), not {path}")
        return [arg for path in paths for arg in ("--lora", str(path))]

    def _launch(self, adapters: dict[str, str | Path]) -> ManagedProcess:
        """Start llama-server with the base and these named adapters. Each is loaded once beside the one
        base and applied per request by id (scale 0 unless asked, hence --lora-init-without-apply)."""
        cmd = self._base_cmd + self._lora_args(list(adapters.values()))
        if adapters:
            cmd.append("--lora-init-without-apply")
        log = cache_dir() / "logs" / f"llama-server-{self._port}.log"
        process = ManagedProcess(cmd + self._extra_args, f"http://127.0.0.1:{self._port}", log,
                                 startup_timeout_s=self._startup_timeout_s, name="llama-server").start()
        self.adapter_ids = {name: i for i, name in enumerate(adapters)}
        self.files["adapters"] = {k: str(v) for k, v in adapters.items()}
        return process

    def set_adapters(self, adapters: dict[str, str | Path]) -> None:
        """Serve this set of named adapters from now on. llama.cpp loads LoRAs only when it starts, so
        llama-server is restarted on the same port with the same base and slots (a few seconds); the
        caller drains the requests in flight first (the server's engine does, `ReasoningEngine.exclusive`)."""
        if self.files["lora"] is not None:
            raise ValueError("this server applies one adapter to every request; serve named adapters "
                             "(--adapter NAME=PATH) to add or remove them at run time")
        self._lora_args(list(adapters.values()))  # refused before the running server is touched
        self.process.stop()
        self.process = self._launch(dict(adapters))

    # ---- requests ------------------------------------------------------------------------------
    def completion_body(self, prompt: str, params: SamplingParams, stream: bool = False) -> dict[str, Any]:
        body = super().completion_body(prompt, params, stream)
        body.pop("structured_outputs", None)
        return {**body, **self.extra_body, **self.lora_field(params)}

    def lora_field(self, params: SamplingParams) -> dict[str, Any]:
        """llama-server's per-request adapters: the named one at scale 1, every other at 0 (the base: all at 0).
        Requests with different adapters share the slots but never a batch."""
        if not self.adapter_ids:
            if params.adapter is not None:
                raise BackendRejected(f"this server holds no adapter named {params.adapter!r}")
            return {}
        if params.adapter is not None and params.adapter not in self.adapter_ids:
            raise BackendRejected(f"no adapter named {params.adapter!r}; this server has {', '.join(self.adapter_ids)}")
        # Every adapter with its scale, always: a request that names none would otherwise decode with the
        # adapters its slot last used (measured: the base's first-token logprob moved by 1 nat under load).
        return {"lora": [{"id": i, "scale": 1.0 if name == params.adapter else 0.0} for name, i in self.adapter_ids.items()]}

    async def samples_body(self, k: int) -> dict[str, Any]:
        """The n=k request's parent goes to the lowest idle slot. llama-server puts the children in
        the lowest free slots, but the parent by least-recent use, which on equal footing is the last
        slot; and a batch's attention spans every KV stream from its lowest slot to its highest
        (llama_kv_cache::get_k views streams s0..s1). Fresh, maj@8 on 16 slots ran in slots 0-6 and
        15, its decode steps 25% slower than in slots 0-7. Without k idle slots the server decides."""
        try:
            r = await self.ahttp.get(f"{self.url}/slots", timeout=2)
            idle = sorted(s["id"] for s in r.json() if not s.get("is_processing"))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return {}
        return {"id_slot": idle[0]} if len(idle) >= k else {}

    def _require_ready(self) -> None:
        if not self.process.serving():
            raise BackendUnavailable(f"llama-server is restarting (restart {self.process.restarts}); retry shortly")

    def _failure(self, error: BackendError) -> BackendError:
        """What a failed call to llama-server means for the client: if the process died, the engine is
        unavailable (HTTP 503) and is marked so at once (/health says it before the watchdog's next
        look, and the requests after it get 503 without trying); otherwise the engine's own error."""
        if isinstance(error, BackendRejected) or not self.process.confirm_death():
            return error
        return BackendUnavailable(f"llama-server stopped during the request ({error}); it is being restarted")

    def count_tokens(self, text: str) -> int:
        self._require_ready()
        try:
            return super().count_tokens(text)
        except BackendError as e:
            raise self._failure(e) from e

    async def acomplete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """Streamed from llama-server even when the caller wants whole answers: a streamed request
        stops at its next token once its connection is closed (timeout, client gone). A waiting
        non-streamed request checks its connection only when its wait times out, and results of
        other requests keep resetting that wait, so under load it would run on to max_tokens."""
        self._require_ready()
        try:
            if params.n > 1:
                done = {i: c async for i, c in super().asamples(prompt, params, params.n)}
                return [done[i] for i in sorted(done)]
            final = None
            async for d in super().astream(prompt, params):
                final = d.completion or final
        except BackendError as e:
            raise await asyncio.to_thread(self._failure, e) from e
        if final is None:
            raise BackendError("llama-server ended the stream without a final chunk")
        return [final]

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        self._require_ready()
        try:
            async for d in super().astream(prompt, params):
                yield d
        except BackendError as e:
            raise await asyncio.to_thread(self._failure, e) from e

    async def asamples(self, prompt: str, params: SamplingParams, k: int) -> AsyncGenerator[tuple[int, Completion], None]:
        self._require_ready()
        gen = super().asamples(prompt, params, k)
        try:
            async for item in gen:
                yield item
        except BackendError as e:
            raise await asyncio.to_thread(self._failure, e) from e
        finally:
            await gen.aclose()  # closing early (a settled vote) closes the stream, which stops the rest

    async def achat_tools(self, messages: Messages, params: SamplingParams, tools: list[dict[str, Any]],
                          tool_choice: Any) -> list[Completion]:
        """A chat request with tools, answered by llama-server's own chat endpoint. A template that
        renders tools gets them natively (its tool-call grammar and parser); for one that cannot,
        llama.cpp would ignore them, so the generic JSON convention of `tool_calls` is used instead."""
        self._require_ready()
        native = tool_calls.renders_tools(self.template.source if self.template else None)
        body: dict[str, Any] = {"model": self.model_name, "max_tokens": params.max_tokens,
                                "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
                                "n": params.n, **self.extra_body,
                                # an exported template's reasoning setup stays off: a tool call is not a reasoning turn
                                "chat_template_kwargs": {SETUP_VARIABLE: False}, **self.lora_field(params)}
        if native:
            body.update(messages=messages, tools=tools)
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        else:
            body.update(messages=tool_calls.messages(messages, tools, tool_choice), response_format={
                "type": "json_schema", "json_schema": {"name": "tool_reply", "schema": tool_calls.schema(tools, tool_choice)}})
        if params.stop:
            body["stop"] = params.stop
        try:
            r = await self.ahttp.post(f"{self.url}/v1/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise await asyncio.to_thread(self._failure, BackendError(f"llama-server: {type(e).__name__}: {e}")) from e
        data = self._check(r)
        out = []
        prompt, per_choice, cached = self._usage(data, len(data.get("choices") or []))
        for c in data.get("choices") or []:
            msg = c.get("message") or {}
            content, calls = msg.get("content") or "", msg.get("tool_calls")
            if not native:
                content, calls = tool_calls.parse(content)
            out.append(Completion(content or "", prompt, per_choice, c.get("finish_reason") or "stop", 0.0,
                                  cached_tokens=cached, tool_calls=calls))
        return out

    # ---- facts -------------------------------------------------------------------------------
    def engine_metrics(self) -> str:
        """llama-server's own Prometheus metrics (prompt cache, slots, tokens)."""
        try:
            return httpx.get(f"{self.url}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    def slot_states(self) -> list[dict[str, Any]]:
        try:
            return json.loads(httpx.get(f"{self.url}/slots", timeout=2).text)
        except (httpx.HTTPError, ValueError):
            return []

    def health(self) -> dict[str, Any]:
        return {**super().health(), "engine": "llama-server", "pid": self.process.pid, "slots": self.slots,
                "ctx_per_slot": self.ctx_per_slot, "files": self.files, "restarts": self.process.restarts,
                "ready": self.process.serving(), "log": str(self.process.log_path), "gpu_offload": self.gpu_offload}

    def close(self) -> None:
        super().close()
        self.process.stop()
