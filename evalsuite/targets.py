"""What an eval measures: a model by name, a GGUF, a base+adapter pair, or a server URL.

Target strings (for `--model` and `--compare`):
  smollm2-135m                      an embedded/local/hub model on the transformers backend
  smollm2-135m+runs/x/adapter       the same with a PEFT LoRA adapter
  exports/x/model-q4_k_m.gguf       a GGUF on llama.cpp
  http://127.0.0.1:8000/v1#name     an OpenAI-compatible server (model `name`; default: its first)
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgereason.formats import ReasoningFormat
from serve.backends.base import Completion, Messages, SamplingParams


@dataclass(frozen=True)
class Target:
    spec: str
    backend: str  # transformers | llama.cpp | server
    model: str
    adapter: Path | None = None
    url: str | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec.replace("://", "-")).strip("_")[:80]


def parse_target(spec: str, backend: str | None = None, adapter: Path | None = None) -> Target:
    """Read a target string; `backend` forces the engine for a model path/name."""
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return Target(spec, "server", model, url=url.rstrip("/"))
    model, plus, extra = spec.partition("+")
    if plus:
        adapter = Path(extra)
    if backend in (None, "server"):
        backend = "llama.cpp" if model.endswith(".gguf") else "transformers"
    return Target(spec, backend, model, adapter)


class ServerClient:
    """Generation through an OpenAI-compatible server, `concurrency` requests at a time.

    Against an edgereason server the reasoning split comes back as `reasoning_content` and is put
    back together for grading; `format_valid` from the server is used when present."""

    name = "server"

    def __init__(self, url: str, fmt: ReasoningFormat, model: str = "", concurrency: int = 4,
                 timeout_s: float = 600, api_key: str | None = None) -> None:
        from openai import OpenAI

        self.fmt = fmt
        self.client = OpenAI(base_url=url, api_key=api_key or os.environ.get("EDGEREASON_API_KEY", "none"),
                             timeout=timeout_s, max_retries=2)
        self.concurrency = concurrency
        self.url = url
        try:
            served = [m.id for m in self.client.models.list().data]
        except Exception as e:
            raise ConnectionError(f"server {url} is not reachable: {type(e).__name__}: {e}") from None
        if model and model not in served:
            raise LookupError(f"server {url} does not serve {model!r}; it serves {', '.join(served)}")
        self.model_name = model or served[0]

    def _one(self, messages: Messages, params: SamplingParams) -> list[Completion]:
        t0 = time.perf_counter()
        resp = self.client.chat.completions.create(
            model=self.model_name, messages=messages, max_tokens=params.max_tokens, temperature=params.temperature,
            top_p=params.top_p, n=params.n, seed=params.seed,
            extra_body={"reasoning": params.grammar is not None},
        )
        latency = time.perf_counter() - t0
        usage = resp.usage
        out = []
        for choice in resp.choices:
            msg = choice.message
            reasoning = (msg.model_extra or {}).get("reasoning_content")
            text = msg.content or ""
            if reasoning is not None:  # an edgereason server split the completion: rebuild it for grading
                valid = (choice.model_extra or {}).get("format_valid", True)
                text = self.fmt.render(reasoning, text) if valid else f"{reasoning}\n{text}"
            out.append(Completion(
                text=text, prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=(usage.completion_tokens // max(1, len(resp.choices))) if usage else 0,
                finish_reason=choice.finish_reason or "stop", latency_s=latency,
            ))
        return out

    def chat(self, batch: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda m: self._one(m, params), batch))

    def close(self) -> None:
        self.client.close()
