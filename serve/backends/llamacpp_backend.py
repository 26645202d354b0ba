"""The edge backend: llama.cpp in process through llama-cpp-python."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

from edgereason.models import resolve_model
from serve.backends.llamacpp_parallel import ParallelDecoder
from serve.backends.base import Backend, Completion, Messages, SamplingParams, restore_closing_tag


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        threads: int | None = None,
        lora_path: str | Path | None = None,
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        self.model_name = resolved.name
        self.format = resolved.format
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads or os.cpu_count() or 1,
            lora_path=str(lora_path) if lora_path else None,
            verbose=False,
        )
        self.context_length = self.llm.n_ctx()
        self.threads = threads or os.cpu_count() or 1
        # n samples of one prompt decode together (shared prompt cache); a GGUF LoRA is applied to
        # the main context only, so with one the samples fall back to one at a time.
        self.parallel_samples = lora_path is None
        self._parallel: ParallelDecoder | None = None
        template = self.llm.metadata.get("tokenizer.chat_template") or resolved.chat_template
        if not template:
            raise ValueError(f"{gguf} carries no chat template and edgereason knows none for it")
        # The prompt is rendered here (not by create_chat_completion) so an assistant prefix can follow it.
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self.llm.token_eos()),
            bos_token=self._token_text(self.llm.token_bos()),
        )

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore") if token >= 0 else ""

    def render(self, messages: Messages, prefix: str = "") -> str:
        return self.formatter(messages=messages).prompt + prefix

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _kwargs(self, params: SamplingParams, seed: int | None) -> dict:
        from llama_cpp import LlamaGrammar, StoppingCriteriaList

        return dict(
            # A server timeout stops the generation itself, not only the wait for it.
            stopping_criteria=StoppingCriteriaList([lambda ids, logits: params.expired()]) if params.deadline else None,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=seed,
            stop=params.stop or None,
            grammar=LlamaGrammar.from_string(params.grammar, verbose=False) if params.grammar else None,
        )

    def _decoder(self) -> ParallelDecoder:
        if self._parallel is None:  # sized for up to 16 samples of a full-length answer
            self._parallel = ParallelDecoder(self.llm, 16, self.context_length + 16 * 512, self.threads)
        return self._parallel

    def _complete_parallel(self, prompt: str, params: SamplingParams, first_seed: int) -> list[Completion]:
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        seeds = [first_seed + j for j in range(params.n)]
        samples, seconds = self._decoder().generate(tokens, params.n, params.max_tokens, params.temperature,
                                                     params.top_p, seeds, params.stop, params.grammar, params.deadline)
        return [Completion(s.text, len(tokens), s.tokens, s.finish_reason, seconds) for s in samples]

    def complete(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if params.n > 1 and self.parallel_samples and params.n <= 16:
            base = params.seed if params.seed is not None else random.randrange(2**31)
            return [self._complete_parallel(p, params, base + i * params.n) for i, p in enumerate(prompts)]
        results: list[list[Completion]] = []
        for i, prompt in enumerate(prompts):
            row = []
            for j in range(params.n):
                t0 = time.perf_counter()
                seed = None if params.seed is None else params.seed + i * params.n + j
                r = self.llm.create_completion(prompt, **self._kwargs(params, seed))
                choice = r["choices"][0]
                row.append(
                    Completion(
                        choice["text"],
                        r["usage"]["prompt_tokens"],
                        r["usage"]["completion_tokens"],
                        choice.get("finish_reason") or "stop",
                        time.perf_counter() - t0,
                    )
                )
            results.append(row)
        return results

    def stream(self, messages: Messages, params: SamplingParams) -> Iterator[str]:
        if params.prefix:
            yield params.prefix
        text, finish = params.prefix, None
        for chunk in self.llm.create_completion(
            self.render(messages, params.prefix), stream=True, **self._kwargs(params, params.seed)
        ):
            choice = chunk["choices"][0]
            delta = choice.get("text") or ""
            finish = choice.get("finish_reason") or finish
            if delta:
                text += delta
                yield delta
        restored = restore_closing_tag(text, params.stop, finish or "stop")
        if restored != text:
            yield restored[len(text):]

    def close(self) -> None:
        if self._parallel is not None:
            self._parallel.close()
        self.llm.close()
