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
    ) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        resolved = resolve_model(model)
        gguf = resolved.require_gguf()
        self.model_name = resolved.name
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=threads or os.cpu_count() or 1,
            lora_path=str(lora_path) if lora_path else None,
            verbose=False,
        )
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

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_string(params.grammar, verbose=False) if params.grammar else None
        results: list[list[Completion]] = []
        for i, messages in enumerate(batch):
            prompt = self.render(messages, params.prefix)
            row = []
            for j in range(params.n):
                t0 = time.perf_counter()
                seed = None if params.seed is None else params.seed + i * params.n + j
                r = self.llm.create_completion(
                    prompt,
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    seed=seed,
                    stop=params.stop or None,
                    grammar=grammar,
                )
                choice = r["choices"][0]
                finish = choice.get("finish_reason") or "stop"
                text = params.prefix + choice["text"]
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
