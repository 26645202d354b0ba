"""The eval stage's configuration (one documented model, as for every stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgereason.config import StageConfig
from edgereason.formats import DEFAULT_FORMAT
from edgereason.models import DEFAULT_MODEL


class EvalConfig(StageConfig):
    """What to evaluate, on what, and how to generate."""

    model: str = Field(DEFAULT_MODEL, description="Model name, HF directory or GGUF file (see `edgereason models`).")
    adapter: Path | None = Field(None, description="Optional PEFT LoRA adapter directory applied on top of `model`.")
    backend: Literal["transformers", "llama.cpp"] = Field(
        "transformers", description="Engine to generate with; llama.cpp needs a GGUF."
    )
    benchmark: str = Field("gsm8k", description="gsm8k, math500, aime24, amc23, gsm8k-train, or a data file path.")
    data_dir: Path | None = Field(None, description="Folder with the benchmark JSONL files (default: ../shared/data).")
    limit: int | None = Field(20, ge=1, description="Evaluate at most this many problems.")
    seed: int | None = Field(None, description="Sample `limit` problems at random with this seed (default: the first ones).")
    format: str = Field(DEFAULT_FORMAT, description="Reasoning format preset the model is prompted for.")
    prefill: bool = Field(
        True, description="Start the answer with the format's open tag (as training does); see ReasoningFormat.prefill."
    )
    max_tokens: int = Field(256, ge=1, le=32768, description="Maximum new tokens per completion.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy decoding.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (transformers backend).")
    out: Path | None = Field(None, description="Output folder (default: results/<model>-<benchmark>-<n>).")
