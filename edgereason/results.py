"""Typed results of each stage, as written to disk and read back (the pipeline reads these, not raw
JSON keys): `TrainRun` (runs/<name>/run.json), `ExportManifest` (exports/<name>/manifest.json),
`EvalSummary` (results/.../summary.json) and `ComparisonRow` (comparison.json), `BenchResults`
(bench.json). Unknown keys are kept (`extra="allow"`), so older and newer files still load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

R = TypeVar("R", bound="Result")


class Result(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def write(self, path: Path) -> Path:
        from edgereason.files import write_text_atomic

        write_text_atomic(path, self.model_dump_json(indent=2))
        return path


# ---- train -----------------------------------------------------------------------------------

class TrainRun(Result):
    name: str
    status: str
    config: dict[str, Any]
    steps: int = 0
    stop_reason: str | None = None
    seconds_per_step: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    final_metrics: dict[str, float] = Field(default_factory=dict)
    rollout_engine: str | None = None
    bf16: bool | None = None
    curriculum: dict[str, int] | None = None


# ---- export ----------------------------------------------------------------------------------

class Verification(Result):
    """How an exported artifact compares with the merged model (edgereason.export.verify)."""

    passed: bool
    top1_agreement: float
    greedy_prefix_match: float
    # top-1 agreement where the merged model's own top token leads by >= 1 logit, and the share of
    # near-tie positions left out (edgereason.export.verify); absent in manifests written before them
    top1_confident: float | None = None
    near_tie_share: float | None = None
    perplexity: float
    reference_perplexity: float
    mean_kl: float
    tokenizer_match: bool | None = None
    chat_template_match: bool | None = None
    sample_answer: str = ""
    thresholds: dict[str, float] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)
    # answer_agreement, format_agreement, format_compliance, answer_accuracy (edgereason.export.answers)
    answers: dict[str, float] | None = None
    # problems, accuracy, reference_accuracy, drop_points, only_it, only_reference, p_value
    # (edgereason.export.answers.AnswerSheet.paired); only with an accuracy check
    accuracy: dict[str, int | float] | None = None  # the counts stay integers

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class Artifact(Result):
    file: str
    kind: str
    quant: str
    status: str
    size_bytes: int
    sha256: str
    bits_per_weight: float | None = None
    verification: Verification | None = None


class ExportManifest(Result):
    name: str | None = None
    format: str | None = None
    parameters: int | None = None
    chosen: str | None = None
    artifacts: dict[str, Artifact] = Field(default_factory=dict)


# ---- eval ------------------------------------------------------------------------------------

class Baseline(Result):
    """What answering without reasoning scores: chance for multiple choice, the most common answer
    of each yes/no or true/false kind; numbers and expressions have none (rate 0)."""

    rate: float
    kind: str  # "chance", "majority-class", "mixed" or "none"
    note: str = ""


class Accuracy(Result):
    value: float
    ci95: tuple[float, float]
    correct: int


class EvalSummary(Result):
    model: str
    target: str
    backend: str
    benchmark: str
    n: int
    strict: Accuracy
    flexible: Accuracy
    baseline: Baseline
    format_compliance: float
    format_ci95: tuple[float, float]
    mean_completion_tokens: float
    mean_reasoning_words: float
    seconds: float
    generation: dict[str, Any]
    out_dir: str
    samples_per_problem: int = 0
    maj_at_k: dict[str, dict[str, float]] = Field(default_factory=dict)  # rule -> k -> value
    pass_at_k: dict[str, dict[str, float]] = Field(default_factory=dict)
    # Votes that check the work: mode (verified, best, repaired) -> rule -> k -> value; and each mode
    # against maj@k at the largest k ({"k", "majority", mode: {"rate", "gained", "lost", "p"}}).
    checked_at_k: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    checked_vs_majority: dict[str, Any] = Field(default_factory=dict)
    sample_format_compliance: float | None = None
    answers_forced: int = 0  # greedy answers the runtime forced where none was written (eval --force-answer)
    categories: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    partial: bool = False
    error: str | None = None
    resumed: int = 0

    @property
    def at_or_below_baseline(self) -> dict[str, bool]:
        if self.baseline.kind == "none":
            return {"strict": False, "flexible": False}
        return {"strict": self.strict.value <= self.baseline.rate, "flexible": self.flexible.value <= self.baseline.rate}


class PairedDifference(BaseModel):
    """One target against another on the problems both finished: the difference in a rate, the exact
    McNemar p-value and the discordant problems (only this target, only the other)."""

    delta: float
    p_value: float
    discordant: tuple[int, int]


class ComparisonRow(Result):
    """One target against the first, on the problems both finished (exact McNemar per rule), and
    against every earlier target (`versus`: a quantized model against its F16, not only the base)."""

    target: str
    benchmark: str
    n: int
    strict: float
    strict_ci95: tuple[float, float]
    flexible: float
    flexible_ci95: tuple[float, float]
    format: float
    baseline: float
    tokens: float
    partial: bool = False
    delta: dict[str, float] = Field(default_factory=dict)  # strict/flexible/format -> difference vs the first target
    p_value: dict[str, float] = Field(default_factory=dict)  # rule -> McNemar p
    discordant: dict[str, tuple[int, int]] = Field(default_factory=dict)  # rule -> (only this, only the first)
    versus: dict[str, dict[str, PairedDifference]] = Field(default_factory=dict)  # earlier target -> rule -> ...
    maj: dict[str, dict[str, float]] = Field(default_factory=dict)
    pass_: dict[str, dict[str, float]] = Field(default_factory=dict, alias="pass")


def read_rows(path: Path) -> list[ComparisonRow]:
    return [ComparisonRow.model_validate(r) for r in json.loads(path.read_text(encoding="utf-8"))]


# ---- bench -----------------------------------------------------------------------------------

class BenchResults(Result):
    machine: dict[str, Any]
    config: dict[str, Any]
    artifacts: list[dict[str, Any]]
    serve: dict[str, Any] | None = None
