"""Run a model over a benchmark and grade it: accuracy, format compliance, tokens and latency."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgereason.data import load_benchmark, sample_problems
from edgereason.formats import get_format
from edgereason.grading import answers_equal, extract_answer
from evalsuite.config import EvalConfig
from evalsuite.metrics import wilson_interval
from serve.backends import Backend, SamplingParams
from serve.backends.factory import create_backend


@dataclass
class EvalSummary:
    model: str
    backend: str
    benchmark: str
    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    format_compliance: float
    format_ci95: tuple[float, float]
    mean_completion_tokens: float
    seconds: float
    generation: dict[str, Any]
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_out_dir(cfg: EvalConfig) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.model).name}-{cfg.benchmark}-{cfg.limit or 'all'}")
    return Path("results") / slug


def run_eval(cfg: EvalConfig, backend: Backend | None = None, show_progress: bool = True) -> EvalSummary:
    """Evaluate `cfg.model` on `cfg.benchmark`; writes samples.jsonl and summary.json."""
    fmt = get_format(cfg.format)
    problems = sample_problems(load_benchmark(cfg.benchmark, cfg.data_dir), cfg.limit, cfg.seed)
    if not problems:
        raise ValueError(f"benchmark {cfg.benchmark!r} has no problems")
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    backend = backend or create_backend(cfg.backend, cfg.model, adapter=cfg.adapter, batch_size=cfg.batch_size)
    params = SamplingParams(
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        stop=fmt.stop_sequences(),
        prefix=fmt.prefill if cfg.prefill else "",
    )
    correct = valid = tokens = 0
    t0 = time.perf_counter()
    step = cfg.batch_size if backend.name == "transformers" else 1
    with (out / "samples.jsonl").open("w", encoding="utf-8") as fh, Progress(
        TextColumn("[bold]eval[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("", total=len(problems))
        for start in range(0, len(problems), step):
            chunk = problems[start : start + step]
            batch = [fmt.messages(p.question) for p in chunk]
            for problem, (completion,) in zip(chunk, backend.chat(batch, params)):
                parsed = fmt.parse(completion.text)
                extracted = extract_answer(completion.text, fmt)
                ok = answers_equal(extracted.text, problem.gold_answer)
                correct += ok
                valid += parsed.valid
                tokens += completion.completion_tokens
                record = {
                    "id": problem.id,
                    "question": problem.question,
                    "gold": problem.gold_answer,
                    "completion": completion.text,
                    "answer": extracted.text,
                    "answer_rule": extracted.rule,
                    "correct": ok,
                    "format_valid": parsed.valid,
                    "format_errors": parsed.describe_errors(),
                    "completion_tokens": completion.completion_tokens,
                    "latency_s": round(completion.latency_s, 3),
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                progress.advance(task)
            done = min(start + step, len(problems))
            progress.update(task, description=f"acc {correct / done:.1%}  format {valid / done:.1%}")
    n = len(problems)
    summary = EvalSummary(
        model=backend.model_name,
        backend=backend.name,
        benchmark=cfg.benchmark,
        n=n,
        accuracy=correct / n,
        accuracy_ci95=wilson_interval(correct, n),
        format_compliance=valid / n,
        format_ci95=wilson_interval(valid, n),
        mean_completion_tokens=tokens / n,
        seconds=round(time.perf_counter() - t0, 2),
        generation=params.to_dict() | {"format": fmt.name},
        out_dir=str(out),
    )
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    return summary
