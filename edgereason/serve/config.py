"""`ServeConfig`: every setting of `edgereason serve`, documented field by field, in sections.

The sections are the engine's limits and each backend's own options; the command-line flags are
generated from these fields (`edgereason serve --help`), and YAML files and `--set section.key=value`
address the same fields.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgereason.backends import BACKENDS, Capability, serve_backends
from edgereason.backends.forcing import budget_error
from edgereason.backends.llama_server import DEFAULT_POLL
from edgereason.config import StageConfig
from edgereason.formats import DEFAULT_FORMAT
from edgereason.gpu_layers import GpuLayers
from edgereason.models import DEFAULT_MODEL

# NAME=PATH: a model id (letters, digits, . _ -) for one of several adapters
_NAMED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*=.+$")

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: prefix of this section's command-line flags ("" = the bare field name)
    flag_prefix: ClassVar[str] = ""


class EngineLimits(Section):
    max_tokens: int = Field(512, ge=1, description="Default and ceiling for max_tokens.")
    max_n: int = Field(8, ge=1, description="Ceiling for n.")
    max_k: int = Field(16, ge=1, description="Ceiling for voting.k.")
    max_queue: int = Field(32, ge=0, description="Requests allowed to wait for the engine; more get 429.")
    format_retries: int = Field(1, ge=0, description="Extra attempts for a completion failing format validation "
                                "(one that ended by itself; a completion cut by max_tokens is returned as it is, with "
                                "finish_reason 'length'). A retry samples at temperature >= 0.7 with a new seed.")
    timeout_s: float = Field(300.0, gt=0, description="Per-request generation deadline (HTTP 504 when it passes).")
    force_answer: int = Field(0, ge=0, le=4096, description="Default tokens of max_tokens kept for a forced answer: a "
                              "reasoning that runs out of the rest, or stops with no answer, is closed by the server and "
                              "the model writes the answer in these (0 = off; a chat request's `force_answer` overrides "
                              "it; not applied to a request whose max_tokens it would fill).")

    @model_validator(mode="after")
    def _room_to_reason(self) -> EngineLimits:
        if (why := budget_error(self.force_answer, self.max_tokens)) is not None:
            raise ValueError(why)
        return self


class LlamaCppOptions(Section):
    slots: int = Field(4, ge=1, description="llama-server slots: sequences decoded together (continuous batching).")
    ctx_per_slot: int | None = Field(None, ge=256,
                                     description="Context per sequence (default: the model's trained context, at most 4096).")
    prompt_cache: bool = Field(True, description="Reuse a slot's KV for a shared prompt prefix. Off makes greedy outputs "
                               "independent of request order: llama.cpp's logits differ slightly between batch sizes.")
    gpu_layers: GpuLayers = Field("auto", description="Layers llama.cpp puts on the GPU: auto, all or a number (0 = CPU only). "
                            "Needs a llama.cpp built with its GPU backend (docs/edge-gpu.md); /health reports the offload.")
    poll: int = Field(DEFAULT_POLL, ge=0, le=100, description="How hard llama.cpp's idle threads spin waiting for work (0-100; "
                      "llama.cpp's own default is 50). 0 costs nothing on an idle CPU here and was 1.5x faster beside "
                      "a busy core: a spinning thread takes the core a descheduled one needs (docs/measurements.md).")


class VLLMOptions(Section):
    flag_prefix: ClassVar[str] = "vllm-"
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    max_model_len: int = Field(4096, ge=256, description="Context length vLLM reserves per sequence.")


class OpenVINOOptions(Section):
    flag_prefix: ClassVar[str] = "openvino-"
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = Field("CPU", description="OpenVINO device (reported in /health).")


class UpstreamOptions(Section):
    flag_prefix: ClassVar[str] = "upstream-"
    urls: list[str] = Field(default_factory=list, description="Replica URL (repeatable): vLLM, llama-server, edgereason.",
                            json_schema_extra={"flag": "--upstream"})
    model: str | None = Field(None, description="Model id on the replicas (default: the model's name).")
    policy: Literal["round_robin", "least_busy"] = Field("least_busy", description="How a replica is chosen.")
    api_key: str | None = Field(None, description="Bearer key the replicas require.")
    per_replica: int = Field(8, ge=1, description="Requests one replica takes at once.")


class ServeConfig(StageConfig):
    model: str = Field(DEFAULT_MODEL, description="Model: a GGUF file, an export folder, an embedded name or an HF dir.")
    adapter: list[str] = Field(
        default_factory=list, description="LoRA: PATH, applied to every request, or NAME=PATH (repeatable): several "
        "adapters on the one base, each a model id chosen per request by `model` (llama.cpp). PATH: a GGUF LoRA, an "
        "export folder (its adapter-lora-f16.gguf) or a PEFT dir (transformers, vLLM).")
    allow_adapter_updates: bool = Field(
        False, description="Add and remove named adapters at run time: POST /v1/load_lora_adapter and "
        "/v1/unload_lora_adapter, as vLLM names them (its VLLM_ALLOW_RUNTIME_LORA_UPDATING). Off by default: the "
        "routes read files named by the client.")
    backend: str = Field(
        "llama.cpp", description="Engine, by its serve name in the backend registry: llama.cpp (llama-server, edge), "
        "vllm (GPU), transformers (reference, one request at a time), openvino (an `export openvino` folder; CPU, "
        "iGPU, NPU), upstream (replicas), scripted (no model; tests and client development), or one registered with "
        "edgereason.backends.register_backend.")
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for a backend registered from outside edgereason "
        "(the built-in ones take their options from their own section).")
    format: str | None = Field(
        None, description=f"Reasoning format the model was trained for (default: the export's manifest, else {DEFAULT_FORMAT}).")
    served_model_name: str | None = Field(None, description="Model id clients use (default: the export's name or the model's).")
    host: str = Field("127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key: str | None = Field(None, description="Require `Authorization: Bearer <key>` (env EDGEREASON_API_KEY).")
    threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp and transformers (default: all cores).")
    cors_origins: list[str] = Field(default_factory=list, description="Browser origin allowed to call the API (repeatable; * for any).",
                                    json_schema_extra={"flag": "--cors-origin"})
    limits: EngineLimits = Field(default_factory=EngineLimits)
    llama_cpp: LlamaCppOptions = Field(default_factory=LlamaCppOptions)
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    openvino: OpenVINOOptions = Field(default_factory=OpenVINOOptions)
    upstream: UpstreamOptions = Field(default_factory=UpstreamOptions)

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        if v not in serve_backends():
            raise ValueError(f"unknown backend {v!r}; choose one of: {', '.join(serve_backends())}")
        return v

    @property
    def backend_name(self) -> str:
        """The registry name of the engine `backend` names (llama.cpp -> llama-server)."""
        return serve_backends()[self.backend]

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapters(cls, v: object) -> object:
        return [] if v is None else [v] if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _check_adapters(self) -> ServeConfig:
        named = [a for a in self.adapter if _NAMED.match(a)]
        if named and len(named) != len(self.adapter):
            raise ValueError("--adapter: either one PATH for every request or NAME=PATH for each of several, not both")
        if not named and len(self.adapter) > 1:
            raise ValueError("several adapters need names: --adapter math=PATH --adapter logic=PATH")
        names = [a.split("=", 1)[0] for a in named]
        if len(set(names)) != len(names):
            raise ValueError(f"--adapter names repeat: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
        if named and Capability.MULTI_ADAPTER not in BACKENDS.get(self.backend_name).capabilities:
            able = [s for s, n in serve_backends().items() if Capability.MULTI_ADAPTER in BACKENDS.get(n).capabilities]
            raise ValueError(f"several adapters on one base run on the {', '.join(able)} backend, not {self.backend}")
        return self

    @property
    def single_adapter(self) -> str | None:
        """The one adapter applied to every request (no name), if any."""
        return self.adapter[0] if len(self.adapter) == 1 and not _NAMED.match(self.adapter[0]) else None

    @property
    def named_adapters(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.adapter if _NAMED.match(a))
