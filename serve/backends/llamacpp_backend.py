"""The edge backend: llama.cpp in process through llama-cpp-python."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgereason.models import resolve_model
from serve.backends.base import Backend, Completion, Messages, SamplingParams


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(
        self,
        model: str,
        n_ctx: int = 2048,
        threads: int | None = None,
        lora_path: str | Path | None = None,
        chat_format: str | None = None,
    ) -> None:
        from llama_cpp import Llama

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        self.model_name = resolved.name
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads or os.cpu_count() or 1,
            lora_path=str(lora_path) if lora_path else None,
            chat_format=chat_format or ("gemma" if resolved.chat_template and "start_of_turn" in resolved.chat_template else None),
            verbose=False,
        )

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_string(params.grammar, verbose=False) if params.grammar else None
        results: list[list[Completion]] = []
        for i, messages in enumerate(batch):
            row = []
            for j in range(params.n):
                t0 = time.perf_counter()
                seed = None if params.seed is None else params.seed + i * params.n + j
                r = self.llm.create_chat_completion(
                    messages=messages,
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    seed=seed,
                    stop=params.stop or None,
                    grammar=grammar,
                )
                choice = r["choices"][0]
                text = choice["message"]["content"] or ""
                finish = choice.get("finish_reason") or "stop"
                if finish == "stop":
                    text = _restore_closing_tag(text, params.stop)
                row.append(
                    Completion(
                        text,
                        r["usage"]["prompt_tokens"],
                        r["usage"]["completion_tokens"],
                        finish,
                        time.perf_counter() - t0,
                    )
                )
            results.append(row)
        return results

    def close(self) -> None:
        self.llm.close()


def _restore_closing_tag(text: str, stops: list[str]) -> str:
    """llama.cpp drops the stop string it matched; a closing tag belongs to the format, so put it
    back when the text opened that block (has <answer> but no </answer>)."""
    for close_tag in stops:
        if close_tag.startswith("</") and close_tag.replace("</", "<", 1) in text and close_tag not in text:
            return text.rstrip() + "\n" + close_tag
    return text
