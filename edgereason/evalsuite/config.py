"""The eval stage's configuration (one documented model, as for every stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgereason.backends.forcing import budget_error
from edgereason.config import StageConfig
from edgereason.formats import DEFAULT_FORMAT
from edgereason.gpu_layers import GpuLayers
from edgereason.models import DEFAULT_MODEL

#: The transfer set: math word problems, the arithmetic floor, logic, and science multiple choice.
TRANSFER = ("gsm8k", "arith", "logic", "arc-easy", "arc-challenge")


class EvalConfig(StageConfig):
    """What to evaluate, on what, and how to generate."""

    model: str = Field(
        DEFAULT_MODEL,
        description="Target: a model name, HF dir, GGUF file, `model+adapter_dir`, or a server URL "
        "`http://host:port/v1#model` (see edgereason/targets.py).",
    )
    adapter: Path | None = Field(None, description="Optional PEFT LoRA adapter directory applied on top of `model`.")
    backend: Literal["transformers", "llama.cpp", "openvino", "server"] | None = Field(
        None, description="Engine: transformers (default for HF models), llama.cpp (default for .gguf), openvino (default "
        "for an OpenVINO IR folder), server (a URL)."
    )
    compare: list[str] = Field(
        default_factory=list, description="Further targets evaluated on the same problems, compared side by side."
    )
    benchmark: list[str] = Field(
        ["gsm8k"], description="Benchmark (repeatable): gsm8k, arith, logic, arc-easy, arc-challenge, math500, aime24, "
        "amc23, a data file, or hf:<name>.")
    transfer: bool = Field(False, description=f"Run the transfer set ({', '.join(TRANSFER)}) and write one table "
                           "across them.")
    grader_bench: bool = Field(False, description="Grade the bundled hand-labelled completions with both rules and "
                               "report disagreements with the expected verdicts (nothing is generated).")
    data_dir: Path | None = Field(None, description="Folder with the benchmark JSONL files (default: ../shared/data).")
    limit: int | None = Field(20, ge=1, description="Evaluate at most this many problems.")
    seed: int | None = Field(None, description="Sample `limit` problems at random with this seed (default: the first ones).")
    format: str = Field(DEFAULT_FORMAT, description="Reasoning format preset the model is prompted for.")
    prefill: bool = Field(
        True, description="Start the answer with the format's open tag (as training does); see ReasoningFormat.prefill."
    )
    constrained: bool = Field(False, description="Constrain decoding to the format's grammar (llama.cpp and servers).")
    max_tokens: int = Field(256, ge=1, le=32768, description="Maximum new tokens per completion.")
    force_answer: int = Field(0, ge=0, le=4096, description="Tokens of max_tokens kept for a forced answer: a reasoning "
                              "that runs out of the rest, or stops with no answer, is closed, the answer opened, and the "
                              "model writes it in these (0 = off; counted as `answers_forced`).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding (the `accuracy` figure).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    samples: int = Field(0, ge=0, le=256, description="Sampled completions per problem for maj@k and pass@k (0 = greedy only).")
    sample_temperature: float = Field(0.7, gt=0.0, le=2.0, description="Temperature of those samples.")
    keep_sample_text: bool = Field(False, description="Also store every sampled completion's text in samples.jsonl.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (transformers backend).")
    threads: int | None = Field(None, ge=1, description="CPU threads for in-process backends (default: all cores).")
    gpu_layers: GpuLayers = Field("auto", description="GGUF targets: layers llama.cpp puts on the GPU (auto, all or a number; "
                            "needs a GPU build of llama.cpp).")
    concurrency: int = Field(8, ge=1, le=1024, description="Problems at once: decoded together for a GGUF "
                             "(llama.cpp in process, continuously batched), requests in flight against a server URL.")
    @model_validator(mode="after")
    def _room_to_reason(self) -> EvalConfig:
        if (why := budget_error(self.force_answer, self.max_tokens)) is not None:
            raise ValueError(why)
        return self

    @field_validator("benchmark", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    @property
    def benchmarks(self) -> list[str]:
        return list(TRANSFER) if self.transfer else list(self.benchmark)

    fresh: bool = Field(False, description="Discard earlier results in the output folder instead of resuming.")
    out: Path | None = Field(None, description="Output folder (default: results/<target>-<benchmark>-<n>).")
