"""`ServeConfig`: every setting of `edgereason serve`, documented field by field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgereason.config import StageConfig
from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import DEFAULT_MODEL


class ServeConfig(StageConfig):
    model: str = Field(DEFAULT_MODEL, description="Model: embedded name, GGUF file, HF directory.")
    adapter: str | None = Field(None, description="LoRA: a PEFT dir (transformers) or a GGUF LoRA (llama.cpp).")
    backend: Literal["llama.cpp", "transformers", "vllm", "upstream"] = Field(
        "llama.cpp", description="Engine: llama.cpp (edge), vllm (GPU), transformers (reference), upstream (a cluster)."
    )
    upstream: list[str] = Field(default_factory=list, description="Upstream replica URLs (backend upstream).")
    upstream_model: str | None = Field(None, description="Model id on the upstreams (default: the model's name).")
    upstream_policy: Literal["round_robin", "least_busy"] = Field("least_busy", description="Replica choice.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    served_name: str | None = Field(None, description="Model id clients use (default: the model's name).")
    format: str | None = Field(
        None, description=f"Reasoning format the model was trained for (default: the export's manifest, else {DEFAULT_FORMAT})."
    )
    host: str = Field("127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key: str | None = Field(None, description="Require `Authorization: Bearer <key>` (env EDGEREASON_API_KEY).")
    n_ctx: int = Field(2048, ge=256, description="Context length (llama.cpp).")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")
    max_tokens: int = Field(512, ge=1, description="Default and ceiling for max_tokens.")
    max_n: int = Field(8, ge=1, description="Ceiling for n.")
    max_k: int = Field(16, ge=1, description="Ceiling for voting.k.")
    max_queue: int = Field(32, ge=0, description="Requests allowed to wait; more get 429.")
    format_retries: int = Field(1, ge=0, description="Extra attempts for a completion failing format validation.")
    timeout_s: float = Field(300.0, gt=0, description="Per-generation timeout (HTTP 504).")
