"""llama.cpp in process through llama-cpp-python: the backend of eval, bench and export checks.

The server does not use it: `edgereason serve --backend llama.cpp` runs llama.cpp's own server
(`llama_server.py`), which batches concurrent requests. In process, a call's prompts and their n
samples are decoded by `ParallelDecoder`: one pass per prompt (their common prefix once), shared KV
cells, one batched decode per step, and the next prompt admitted as soon as rows finish (continuous
batching); that is eval's greedy pass as well as maj@k and pass@k.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgereason.backends.base import Backend, Completion, Delta, Messages, SamplingParams
from edgereason.backends.chat_template import ChatTemplate
from edgereason.backends.llamacpp_parallel import ParallelDecoder
from edgereason.cpu import default_threads
from edgereason.models import resolve_model

MAX_PARALLEL_SAMPLES = 16


logger = logging.getLogger("edgereason.backends")


class LlamaCppBackend(Backend):
    name = "llama-cpp-python"
    parallel_samples = True

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        threads: int | None = None,
        lora_path: str | Path | None = None,
        gpu_layers: str | int | None = "auto",
        parallel_prompts: int | None = None,
    ) -> None:
        super().__init__()
        from llama_cpp import Llama

        from edgereason.gpu_layers import n_gpu_layers, offload_report, warn_if_unsupported

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        lora_path = lora_path if lora_path is not None else resolved.adapter  # an export that chose base + LoRA
        self.model_name = resolved.name
        self.format = resolved.format
        self.threads = default_threads(threads)
        warn_if_unsupported(gpu_layers, logger.warning)
        self.gpu_offload = offload_report(gpu_layers)
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=self.threads, n_gpu_layers=n_gpu_layers(gpu_layers),
                         lora_path=str(lora_path) if lora_path else None, verbose=False)
        self.context_length = self.llm.n_ctx()
        self.lora_path = lora_path  # applied to the batched decoder's context as well
        # prompts decoded at once by the batched decoder (None: as many as its slots and cells take)
        self.parallel_prompts = parallel_prompts
        self._parallel: ParallelDecoder | None = None
        self.template = ChatTemplate.from_gguf_metadata(self.llm, resolved.chat_template, str(gguf))

    def render(self, messages: Messages, prefix: str = "", tools: list[dict[str, Any]] | None = None) -> str:
        return self.template.render(messages, tools) + prefix

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _kwargs(self, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        from llama_cpp import LlamaGrammar, StoppingCriteriaList

        bias = dict(params.logit_bias or {})
        if params.ignore_eos:
            bias[self.llm.token_eos()] = float("-inf")
        return dict(
            # A timeout or a cancelled request stops the generation itself, not only the wait for it.
            stopping_criteria=StoppingCriteriaList([lambda ids, logits: params.should_stop()]),
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=seed,
            stop=params.stop or None,
            logit_bias=bias or None,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=LlamaGrammar.from_string(params.grammar, verbose=False) if params.grammar else None,
        )

    def _decoder(self) -> ParallelDecoder:
        if self._parallel is None:  # sized for up to 16 samples of a full-length answer
            self._parallel = ParallelDecoder(self.llm, MAX_PARALLEL_SAMPLES,
                                             (self.context_length or 2048) + MAX_PARALLEL_SAMPLES * 512, self.threads)
            if self.lora_path is not None:
                self._parallel.set_lora(Path(self.lora_path))
        return self._parallel

    @staticmethod
    def _batchable(params: SamplingParams) -> bool:
        """What the batched decoder implements: temperature, top-p, stop strings, a grammar."""
        return not (params.ignore_eos or params.logit_bias or params.frequency_penalty or params.presence_penalty)

    def _complete_batched(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """Every (prompt, sample) row in one continuously batched call: a prompt's samples are
        admitted together as slots and KV cells free up (at most `parallel_prompts` prompts at once)."""
        base = params.seed if params.seed is not None else random.randrange(2**31)
        tokens = [self.llm.tokenize(p.encode("utf-8"), add_bos=False, special=True) for p in prompts]
        rows = [(i, base + i * params.n + j) for i in range(len(prompts)) for j in range(params.n)]
        samples, seconds = self._decoder().generate_batch(
            [tokens[i] for i, _ in rows], [params.temperature] * len(rows), [seed for _, seed in rows],
            params.max_tokens, params.top_p, params.stop, params.grammar, params.should_stop,
            max_live_prompts=self.parallel_prompts)
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _), s in zip(rows, samples):
            out[i].append(Completion(s.text, len(tokens[i]), s.tokens, s.finish_reason, seconds))
        return out

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if (params.n > 1 or len(prompts) > 1) and self._batchable(params):
            return self._complete_batched(prompts, params)
        results: list[list[Completion]] = []
        for i, prompt in enumerate(prompts):
            row = []
            for j in range(params.n):
                seed = None if params.seed is None else params.seed + i * params.n + j
                *_, last = self._stream(prompt, params, seed)
                assert last.completion is not None
                row.append(last.completion)
            results.append(row)
        return results

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[Delta]:
        return self._stream(prompt, params, params.seed)

    def _stream(self, prompt: str, params: SamplingParams, seed: int | None) -> Iterator[Delta]:
        t0 = time.perf_counter()
        ttft = None
        text, finish, n_tokens = "", None, 0
        prompt_tokens = self.count_tokens(prompt)
        chunks: Any = self.llm.create_completion(prompt, stream=True, **self._kwargs(params, seed))
        for chunk in chunks:
            choice = chunk["choices"][0]
            delta = choice.get("text") or ""
            finish = choice.get("finish_reason") or finish
            if delta:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                n_tokens += 1
                text += delta
                yield Delta(delta)
        # llama-cpp-python reports "stop" for a stopping criterion; a cut by deadline or cancel is a length cut.
        if params.should_stop() and n_tokens < params.max_tokens:
            finish = "length"
        done = Completion(text, prompt_tokens, n_tokens, finish or "stop", time.perf_counter() - t0, ttft)
        yield Delta("", done.finish_reason, done)

    def close(self) -> None:
        if self._parallel is not None:
            self._parallel.close()
        self.llm.close()
