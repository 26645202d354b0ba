"""A model's chat template, rendered the way transformers and llama.cpp render it (jinja2 with
trim_blocks and lstrip_blocks, `raise_exception`, `tojson`), from a GGUF's metadata or given text.

Every engine that generates from raw prompts (llama.cpp in process, llama-server, upstream
replicas) renders prompts here, so a format prefill can follow the opened assistant turn exactly.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The template variable an exported template's reasoning setup answers to (export/chat_setup.py); edgereason
#: renders with it false and adds the setup per request itself.
SETUP_VARIABLE = "reasoning_setup"


class TemplateError(ValueError):
    """A model without a usable chat template, or messages its template refuses."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = template
        self._template = env.from_string(template)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, setup: bool = False) -> str:
        """`setup` turns on the reasoning setup an exported template carries (export/chat_setup.py):
        off here, since edgereason adds the format's system prompt and prefill per request itself."""
        try:
            return self._template.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         **{SETUP_VARIABLE: setup})
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            # what a template's own expressions raise on messages it cannot render: the caller's input problem
            raise TemplateError(f"the chat template cannot render these messages: {type(e).__name__}: {e}") from e

    @classmethod
    def from_gguf_metadata(cls, llm: Any, fallback: str | None, where: str) -> ChatTemplate:
        """From a loaded llama-cpp-python `Llama` (vocab-only is enough)."""
        template = llm.metadata.get("tokenizer.chat_template") or fallback
        if not template:
            raise TemplateError(f"{where} carries no chat template and edgereason knows none for it")

        def text(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", errors="ignore") if token >= 0 else ""

        return cls(template, text(llm.token_bos()), text(llm.token_eos()))

    @classmethod
    def from_gguf_file(cls, path: str | Path, fallback: str | None = None) -> ChatTemplate:
        """From a GGUF file's metadata, read with gguf-py (no weights loaded, no llama.cpp needed)."""
        from gguf import GGUFReader

        reader = GGUFReader(str(path))

        def field(key: str) -> Any:
            f = reader.fields.get(key)
            return None if f is None else f.contents()

        template = field("tokenizer.chat_template") or fallback
        if not template:
            raise TemplateError(f"{path} carries no chat template and edgereason knows none for it")
        tokens = reader.fields.get("tokenizer.ggml.tokens")

        def token_text(key: str) -> str:
            idx = field(key)
            if idx is None or tokens is None:
                return ""
            return bytes(tokens.parts[tokens.data[int(idx)]]).decode("utf-8", errors="ignore")

        return cls(template, token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id"))
