"""The export stage's configuration: one documented model per command, flags generated from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgereason.config import StageConfig

#: Candidates of the quality-gated ladder, largest first (llama-quantize type names, lower case).
LADDER = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "iq4_xs", "iq4_nl", "q3_k_m", "iq3_m"]


def _split_commas(value: object) -> object:
    """`--quant q8_0,q4_k_m` and `--quant q8_0 --quant q4_k_m` (and YAML lists) mean the same."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [q.strip().lower() for item in value for q in str(item).split(",") if q.strip()]
    return value


def _training_sets_only(sets: list[str]) -> None:
    from edgereason.data import is_eval_only

    refused = [d for d in sets if is_eval_only(d)]
    if refused:
        raise ValueError(f"calibration_data: {', '.join(refused)} is for evaluation only; calibrate on training sets")


class ExportSourceConfig(StageConfig):
    """Where an export starts and where it goes (shared by `export gguf` and `export int4`)."""

    out: Path = Field(..., description="Export folder (created; holds manifest.json).", json_schema_extra={"flag": "--out"})
    base: str | None = Field(None, description="Base model (embedded name, HF dir, GGUF, hub id); default: the adapter's run.")
    adapter: Path | None = Field(None, description="PEFT LoRA adapter folder (e.g. runs/x/adapter).")
    format: str | None = Field(None, description="Reasoning format recorded for serve (default: the run's).")
    force: bool = Field(False, description="Redo artifacts already exported and verified.")
    threads: int | None = Field(None, ge=1, description="CPU threads for quantization and verification.")
    answer_problems: int = Field(
        24, ge=0, description="Training-distribution problems (arith-train, gsm8k-train; never a test set) answered "
        "greedily by the merged model and by each artifact: the answer-level check (0 skips it).")


class GGUFExportConfig(ExportSourceConfig):
    """`edgereason export gguf`: merge, convert with llama.cpp's converter, quantize, verify."""

    quant: list[str] = Field(["q8_0", "q4_k_m"], description="Quant types (repeatable or comma-separated): "
                             "q8_0, q6_k, q5_k_m, q4_k_m, q4_0, iq4_xs, iq4_nl, q3_k_m, iq3_m, ... ")
    outtype: Literal["f16", "bf16", "f32"] = Field("f16", description="The unquantized GGUF every quant is made from.")
    chat_setup: bool = Field(True, description="Carry the format's system prompt and reasoning prefill in the GGUFs' "
                             "chat template (and write an Ollama Modelfile and a model card), so Ollama, LM Studio or a "
                             "bare llama-server --jinja build the prompt the model was trained on.")
    lora: bool = Field(True, description="Also write the adapter alone as a GGUF LoRA (llama.cpp's --lora on the "
                       "base GGUF). With a ladder it is a candidate too, sized as base + adapter.")
    imatrix: bool = Field(True, description="Calibrate every type below q8_0 with llama.cpp's importance matrix, "
                          "computed on the model's own reasoning traces.")
    imatrix_file: Path | None = Field(None, description="Use this llama.cpp imatrix (GGUF or .dat) instead of computing one.")
    calibration_problems: int = Field(64, ge=4, description="Training problems the model answers to make the imatrix's "
                                      "calibration text (its own format-valid traces, chat template and tags included).")
    calibration_data: list[str] = Field(["arith-train", "gsm8k-train"], description="Training sets the calibration "
                                        "problems come from (test sets are refused).")
    # attn_v at q8_0 by default: on both measured adapters it cut mean KL by 27-30% for 0.6% more bytes
    # (README, Export). llama.cpp's own recipes already give attn_v more bits in some layers.
    tensor_type: list[str] = Field(["attn_v=q8_0"], description="Per-tensor overrides for the types below q8_0, as "
                                   "llama-quantize's PATTERN=TYPE (repeatable or comma-separated), e.g. attn_v=q8_0, "
                                   "ffn_down=q6_k, token_embd=q8_0 (embeddings and a tied output), output=q8_0; "
                                   "'' for none. Recorded per artifact.")
    target_agreement: float | None = Field(None, gt=0, le=1, description="Quality-gated ladder: try the --ladder types "
                                           "and keep the smallest whose top-1 agreement with the merged model is at least this.")
    target_kl: float | None = Field(None, gt=0, description="Ladder bound on mean KL(merged ‖ artifact).")
    target_answers: float | None = Field(None, gt=0, le=1, description="Ladder bound on the share of greedy answers "
                                         "equal to the merged model's.")
    # Answer identity is too strict a gate for a small model: on the make run adapter no quant gave more than
    # 9 of 16 greedy answers equal to the merged model's, while on 300 held-out problems Q8_0, Q6_K and Q4_K_M
    # were not significantly less accurate (docs/measurements.md). What users lose is accuracy: this gates it.
    target_accuracy_drop: float | None = Field(
        None, ge=0, le=100, description="Ladder bound in accuracy points: on the accuracy check's held-out problems "
        "a candidate may solve at most this many points fewer than the merged model, and not significantly fewer "
        "(paired exact McNemar, p < 0.05).")
    accuracy_data: str = Field("arith-dev", description="Held-out problems of the accuracy check (--target-accuracy-drop): "
                               "a dev split, or a training set the adapter was not trained on; test sets are refused.")
    accuracy_problems: int = Field(300, ge=1, description="Problems of the accuracy check (the same for the merged "
                                   "model and every candidate).")
    ladder: list[str] = Field(LADDER, description="Candidates for the ladder, largest first.")

    _commas = field_validator("quant", "ladder", "tensor_type", mode="before")(_split_commas)

    @property
    def overrides(self) -> dict[str, str]:
        """`tensor_type` as {pattern: type}."""
        return dict(item.split("=", 1) for item in self.tensor_type)

    @property
    def calibrated(self) -> bool:
        """Whether an importance matrix is made or given for the types below 8 bits."""
        return self.imatrix or self.imatrix_file is not None

    @property
    def gated(self) -> bool:
        return any(t is not None for t in (self.target_agreement, self.target_kl, self.target_answers,
                                           self.target_accuracy_drop))

    @model_validator(mode="after")
    def _known_types(self) -> GGUFExportConfig:
        from edgereason.export.llama_tools import QUANT_TYPES

        malformed = [t for t in self.tensor_type if t.count("=") != 1 or not all(t.split("="))]
        if malformed:
            raise ValueError(f"tensor_type: {', '.join(malformed)} is not PATTERN=TYPE (e.g. attn_v=q8_0)")
        for field_name, values in (("quant", self.quant), ("ladder", self.ladder),
                                   ("tensor_type", list(self.overrides.values()))):
            bad = [q for q in values if q.lower() not in QUANT_TYPES and q.lower() not in ("f16", "bf16", "f32")]
            if bad:
                raise ValueError(f"{field_name}: unknown type(s) {', '.join(bad)}; choose from {', '.join(QUANT_TYPES)}")
        _training_sets_only(self.calibration_data)
        if self.target_answers is not None and self.answer_problems == 0:
            raise ValueError("target_answers needs answer_problems > 0")
        if self.target_accuracy_drop is not None:
            from edgereason.data import is_test_set

            if is_test_set(self.accuracy_data):
                raise ValueError(f"accuracy_data: {self.accuracy_data} is a test set, and a ladder chooses on its "
                                 "problems; use a held-out dev split (arith-dev) or an untrained training set")
        return self


class Int4ExportConfig(ExportSourceConfig):
    """`edgereason export int4`: a bitsandbytes NF4 checkpoint for GPU serving."""

    double_quant: bool = Field(True, description="Quantize the NF4 scales too (bitsandbytes double quantization).")
    compute_dtype: Literal["bf16", "fp32", "fp16"] = Field("bf16", description="The dtype NF4 weights are dequantized "
                                                          "to for each matmul.")


class OpenVINOExportConfig(ExportSourceConfig):
    """`edgereason export openvino`: an OpenVINO IR (optimum-intel), weights compressed by NNCF."""

    weights: Literal["int4", "int8", "base-lora"] = Field(
        "int4", description="Weight format: int4 (group-wise, asymmetric, NNCF) or int8; base-lora: the base GGUF's own "
        "4-bit blocks carried into the IR unchanged, the adapter as a low-rank branch beside them (a base that is "
        "itself a Q4_0/Q4_1/Q8_0 GGUF, such as the embedded default, and an --adapter).")
    group_size: int = Field(64, description="INT4 group size (-1: per channel).")
    ratio: float = Field(1.0, gt=0, le=1, description="Share of layers at INT4; the rest INT8 (a mixed model below 1).")
    awq: bool = Field(True, description="INT4: NNCF's AWQ on the calibration traces.")
    scale_estimation: bool = Field(True, description="INT4: NNCF's scale estimation on the calibration traces.")
    lora_correction: bool = Field(False, description="INT4: NNCF's LoRA correction, low-rank adapters fitted on the "
                                  "calibration traces that recover part of the quantization error (a quarter of the KL "
                                  "on SmolLM2-135M) at a decode cost (about a third of the tokens/s there).")
    calibration_problems: int = Field(64, ge=4, description="Training problems the model answers for the calibration "
                                      "traces (the same source as the GGUF importance matrix).")
    calibration_data: list[str] = Field(["arith-train", "gsm8k-train"], description="Training sets of those problems.")
    seq_len: int = Field(512, ge=32, description="Tokens of each calibration trace at most.")

    @model_validator(mode="after")
    def _training_data_only(self) -> OpenVINOExportConfig:
        _training_sets_only(self.calibration_data)
        if self.group_size != -1 and self.group_size < 8:
            raise ValueError("group_size must be -1 (per channel) or at least 8")
        if self.lora_correction and self.weights != "int4":
            raise ValueError(f"lora_correction corrects NNCF's INT4 weights; it does not apply to weights={self.weights}")
        if self.weights == "base-lora" and self.adapter is None:
            raise ValueError("weights=base-lora writes an adapter beside the base's blocks: give --adapter")
        if self.weights == "base-lora" and self.ratio != 1.0:
            raise ValueError("ratio mixes NNCF's INT4 and INT8; weights=base-lora keeps the base's own blocks")
        return self
