"""llama.cpp in process through llama-cpp-python: the backend of eval, bench and export checks.

The server does not use it: `edgereason serve --backend llama.cpp` runs llama.cpp's own server
(`llama_server.py`), which batches concurrent requests. In process, n samples of one prompt are
decoded together by `ParallelDecoder` (one prompt pass, shared KV cells, one batched decode per
step), which is what maj@k and pass@k evaluation need.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgereason.backends.base import Backend, Completion, Delta, Messages, SamplingParams
from edgereason.backends.chat_template import ChatTemplate
from edgereason.backends.llamacpp_parallel import ParallelDecoder
from edgereason.models import resolve_model

MAX_PARALLEL_SAMPLES = 16


class LlamaCppBackend(Backend):
    name = "llama-cpp-python"
    supports = frozenset({"penalties", "grammar"})

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        threads: int | None = None,
        lora_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        from llama_cpp import Llama

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        self.model_name = resolved.name
        self.format = resolved.format
        self.threads = threads or os.cpu_count() or 1
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=self.threads,
                         lora_path=str(lora_path) if lora_path else None, verbose=False)
        self.context_length = self.llm.n_ctx()
        # A GGUF LoRA is applied to the main context only, so with one the samples go one at a time.
        self.parallel_samples = lora_path is None
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
        return self._parallel

    def _complete_parallel(self, prompt: str, params: SamplingParams, first_seed: int) -> list[Completion]:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        seeds = [first_seed + j for j in range(params.n)]
        samples, seconds = self._decoder().generate(tokens, params.n, params.max_tokens, params.temperature,
                                                     params.top_p, seeds, params.stop, params.grammar,
                                                     params.should_stop)
        return [Completion(s.text, len(tokens), s.tokens, s.finish_reason, seconds) for s in samples]

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if params.n > 1 and self.parallel_samples and params.n <= MAX_PARALLEL_SAMPLES and not params.ignore_eos:
            base = params.seed if params.seed is not None else random.randrange(2**31)
            return [self._complete_parallel(p, params, base + i * params.n) for i, p in enumerate(prompts)]
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
        for chunk in self.llm.create_completion(prompt, stream=True, **self._kwargs(params, seed)):
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
