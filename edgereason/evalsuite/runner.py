"""Run one target over a benchmark and grade it: greedy accuracy, maj@k and pass@k from sampled
completions, format compliance, reasoning length, per-category breakdowns, tokens and latency.

Results go to `<out>/samples.jsonl` (one line per problem, appended as it finishes, so an
interrupted eval resumes where it stopped), `<out>/settings.json` (what produced them) and
`<out>/summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgereason.data import Problem, load_benchmark, sample_problems
from edgereason.formats import ReasoningFormat, get_format
from edgereason.grading import extract_answer, is_correct
from edgereason.evalsuite.config import EvalConfig
from edgereason.evalsuite.metrics import majority_correct, pass_at_k, wilson_interval
from edgereason.backends.base import Completion, SamplingParams
from edgereason.evalsuite.targets import Target, open_target, parse_target


class EvalError(RuntimeError):
    """An eval could not start or had to stop; the message says why."""


@dataclass
class EvalSummary:
    model: str
    target: str
    backend: str
    benchmark: str
    n: int
    accuracy: float
    accuracy_ci95: tuple[float, float]
    format_compliance: float
    format_ci95: tuple[float, float]
    mean_completion_tokens: float
    mean_reasoning_words: float
    seconds: float
    generation: dict[str, Any]
    out_dir: str
    samples_per_problem: int = 0
    maj_at_k: dict[str, float] = field(default_factory=dict)
    maj_at_k_ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    pass_at_k: dict[str, float] = field(default_factory=dict)
    sample_format_compliance: float | None = None
    categories: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    partial: bool = False
    error: str | None = None
    resumed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_out_dir(cfg: EvalConfig, target: Target) -> Path:
    return Path("results") / f"{target.slug}-{Path(cfg.benchmark).stem}-{cfg.limit or 'all'}"


def ks_for(samples: int) -> list[int]:
    """k values reported for maj@k/pass@k: powers of two up to the sample count, and the count."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples]
    return ks + ([samples] if samples and samples not in ks else [])


def _grade(c: Completion, p: Problem, fmt: ReasoningFormat, keep_text: bool) -> dict[str, Any]:
    parsed = fmt.parse(c.text)
    extracted = extract_answer(c.text, fmt)
    rec = {
        "answer": extracted.text,
        "answer_rule": extracted.rule,
        "correct": is_correct(extracted.text, p.gold_answer, p.choices),
        "format_valid": parsed.valid,
        "reasoning_words": len((parsed.reasoning or "").split()),
        "completion_tokens": c.completion_tokens,
        "latency_s": round(c.latency_s, 3),
    }
    if keep_text:
        rec["completion"] = c.text
        rec["format_errors"] = parsed.describe_errors()
        rec["finish_reason"] = c.finish_reason
    return rec


def _settings(cfg: EvalConfig, target: Target, problems: list[Problem], greedy: SamplingParams,
              sampled: SamplingParams | None, fmt: ReasoningFormat) -> dict[str, Any]:
    ids = hashlib.sha256("\n".join(p.id for p in problems).encode()).hexdigest()[:16]
    return {
        "target": target.spec, "backend": target.backend, "benchmark": cfg.benchmark, "problems": len(problems),
        "problem_ids_sha": ids, "format": fmt.name, "greedy": greedy.to_dict(),
        "sampled": sampled.to_dict() if sampled else None,
    }


def _load_done(out: Path, settings: dict[str, Any], fresh: bool) -> dict[str, dict]:
    samples, saved = out / "samples.jsonl", out / "settings.json"
    if fresh or not samples.is_file():
        samples.unlink(missing_ok=True)
        return {}
    old = json.loads(saved.read_text()) if saved.is_file() else None
    if old != settings:
        changed = sorted(k for k in settings if old is None or old.get(k) != settings[k])
        raise EvalError(
            f"{out} holds results made with other settings ({', '.join(changed)} differ); "
            "pass --fresh to replace them or --out to write elsewhere"
        )
    done = {}
    for line in samples.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            done[rec["id"]] = rec
        except (ValueError, KeyError):
            break  # a line cut by an interruption: everything after it is redone
    samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()), encoding="utf-8")
    return done


def run_eval(cfg: EvalConfig, target: Target | None = None, backend=None, show_progress: bool = True) -> EvalSummary:
    """Evaluate one target on `cfg.benchmark` (resuming finished problems); see the module doc."""
    fmt = get_format(cfg.format)
    target = target or parse_target(cfg.model, cfg.backend, cfg.adapter)
    try:
        problems = sample_problems(load_benchmark(cfg.benchmark, cfg.data_dir), cfg.limit, cfg.seed)
    except (ValueError, FileNotFoundError) as e:
        raise EvalError(str(e)) from None
    if not problems:
        raise EvalError(f"benchmark {cfg.benchmark!r} has no problems")
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg, target)
    out.mkdir(parents=True, exist_ok=True)
    prefix = fmt.prefill if cfg.prefill else ""
    greedy = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=fmt.stop_sequences(), prefix=prefix)
    if cfg.constrained:
        greedy.grammar = fmt.grammar(after_prefill=bool(prefix))
    sampled = None
    if cfg.samples:
        sampled = SamplingParams(**{**greedy.__dict__, "temperature": cfg.sample_temperature, "n": cfg.samples,
                                    "seed": cfg.seed if cfg.seed is not None else 0})
    settings = _settings(cfg, target, problems, greedy, sampled, fmt)
    done = _load_done(out, settings, cfg.fresh)
    (out / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    todo = [p for p in problems if p.id not in done]

    error = None
    t0 = time.perf_counter()
    if todo and backend is None:
        try:
            backend = open_target(target, fmt, batch_size=cfg.batch_size, threads=cfg.threads,
                                  concurrency=cfg.concurrency)
        except Exception as e:  # a model that fails to load or a server that is down
            raise EvalError(f"cannot open {target.spec}: {e}") from None
    model_name = getattr(backend, "model_name", target.model) if backend else target.model
    step = cfg.batch_size if target.backend == "transformers" else (cfg.concurrency if target.backend == "server" else 1)
    records = dict(done)
    with (out / "samples.jsonl").open("a", encoding="utf-8") as fh, Progress(
        TextColumn("[bold]eval[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        disable=not show_progress,
    ) as progress:
        task = progress.add_task(target.spec, total=len(problems), completed=len(done))
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            batch = [fmt.messages(p.prompt) for p in chunk]
            try:
                greedy_out = backend.chat(batch, greedy)
                sample_out = backend.chat(batch, sampled) if sampled else [[] for _ in chunk]
            except Exception as e:  # keep what is done, mark the run partial, say why
                error = f"{type(e).__name__}: {e}"
                break
            for p, (g,), samples in zip(chunk, greedy_out, sample_out):
                rec = {"id": p.id, "question": p.prompt, "gold": p.gold_answer, "subject": p.subject,
                       "level": p.level, "source": p.source, "prompt_tokens": g.prompt_tokens,
                       **_grade(g, p, fmt, keep_text=True),
                       "samples": [_grade(s, p, fmt, keep_text=cfg.keep_sample_text) for s in samples]}
                records[p.id] = rec
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
            progress.advance(task, len(chunk))
            graded = list(records.values())
            progress.update(task, description=f"{target.spec}  acc {sum(r['correct'] for r in graded) / len(graded):.1%}"
                            f"  format {sum(r['format_valid'] for r in graded) / len(graded):.1%}")
    if backend is not None and hasattr(backend, "close"):
        backend.close()
    ordered = [records[p.id] for p in problems if p.id in records]
    summary = summarise(ordered, cfg, target, model_name, settings, out, time.perf_counter() - t0)
    summary.resumed = len(done)
    summary.partial = len(ordered) < len(problems)
    summary.error = error
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    return summary


def _rate(records: list[dict], key: str) -> float:
    return sum(bool(r[key]) for r in records) / len(records) if records else 0.0


def summarise(records: list[dict], cfg: EvalConfig, target: Target, model: str, settings: dict, out: Path,
              seconds: float) -> EvalSummary:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    valid = sum(r["format_valid"] for r in records)
    k_max = min((len(r["samples"]) for r in records), default=0)
    maj, maj_ci, pak = {}, {}, {}
    for k in ks_for(k_max):
        per = [majority_correct([s["answer"] for s in r["samples"]], [s["format_valid"] for s in r["samples"]],
                                [s["correct"] for s in r["samples"]], k) for r in records]
        maj[str(k)] = sum(per) / n
        maj_ci[str(k)] = wilson_interval(round(sum(per)), n)
        pak[str(k)] = sum(pass_at_k(len(r["samples"]), sum(s["correct"] for s in r["samples"]), k) for r in records) / n
    all_samples = [s for r in records for s in r["samples"]]
    categories: dict[str, dict[str, dict[str, float]]] = {}
    for key in ("subject", "level", "source"):
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            if r.get(key) is not None:
                groups[str(r[key])].append(r)
        if len(groups) > 1:
            categories[key] = {g: {"n": len(rs), "accuracy": _rate(rs, "correct"), "format": _rate(rs, "format_valid")}
                               for g, rs in sorted(groups.items())}
    return EvalSummary(
        model=model, target=target.spec, backend=target.backend, benchmark=cfg.benchmark, n=n,
        accuracy=correct / n if n else 0.0, accuracy_ci95=wilson_interval(correct, n),
        format_compliance=valid / n if n else 0.0, format_ci95=wilson_interval(valid, n),
        mean_completion_tokens=sum(r["completion_tokens"] for r in records) / n if n else 0.0,
        mean_reasoning_words=sum(r["reasoning_words"] for r in records) / n if n else 0.0,
        seconds=round(seconds, 2), generation=settings, out_dir=str(out), samples_per_problem=k_max,
        maj_at_k=maj, maj_at_k_ci95=maj_ci, pass_at_k=pak,
        sample_format_compliance=_rate(all_samples, "format_valid") if all_samples else None,
        categories=categories,
    )
