"""Run one target over a benchmark and grade it: strict and flexible accuracy (see
edgereason.grading), the benchmark's baseline, maj@k and pass@k from sampled completions, format
compliance, reasoning length, per-category breakdowns, tokens and latency.

Results go to `<out>/samples.jsonl` (one line per problem, appended as it finishes, so an
interrupted eval resumes where it stopped), `<out>/settings.json` (what produced them) and
`<out>/summary.json` (`edgereason.results.EvalSummary`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgereason.backends.base import BackendError, Completion, SamplingParams
from edgereason.backends.forcing import force_answers, reasoning_params
from edgereason.console import make_progress
from edgereason.data import Problem, load_benchmark, sample_problems
from edgereason.evalsuite.config import EvalConfig
from edgereason.evalsuite.metrics import majority_correct, pass_at_k, vote_correct, wilson_interval
from edgereason.formats import ReasoningFormat, get_format
from edgereason.grading import answer_type, answers_equal, grade_completion, normalize_answer
from edgereason.paired import mcnemar_exact
from edgereason.results import Accuracy, Baseline, EvalSummary
from edgereason.targets import Target, open_target, parse_target
from edgereason.voting import VoteMode, ballot
from edgereason.work_check import check_work

RULES = ("strict", "flexible")


class EvalError(RuntimeError):
    """An eval could not start or had to stop; the message says why."""


def single_benchmark(cfg: EvalConfig) -> str:
    names = cfg.benchmarks
    if len(names) != 1:
        raise EvalError(f"one benchmark per run_eval call, got {names}")
    return names[0]


def default_out_dir(cfg: EvalConfig, target: Target) -> Path:
    return Path("results") / f"{target.slug}-{Path(single_benchmark(cfg)).stem}-{cfg.limit or 'all'}"


def ks_for(samples: int) -> list[int]:
    """k values reported for maj@k/pass@k: powers of two up to the sample count, and the count."""
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= samples]
    return ks + ([samples] if samples and samples not in ks else [])


def baseline_of(problems: list[Problem]) -> Baseline:
    """The accuracy of answering without reasoning: for multiple choice the chance rate (1 / options),
    for yes/no and true/false the most common answer of that kind in this benchmark; numbers, sets
    and expressions add nothing (a guess is almost never right)."""
    if not problems:
        return Baseline(rate=0.0, kind="none")
    kinds = [answer_type(p.gold_answer, p.choices) for p in problems]
    expected = 0.0
    parts = []
    for kind in ("choice", "yes_no", "true_false"):
        members = [p for p, k in zip(problems, kinds) if k == kind]
        if not members:
            continue
        if kind == "choice":
            expected += sum(1 / len(p.choices or ("",)) for p in members)
            parts.append(f"chance on {len(members)} multiple-choice")
        else:
            counts = Counter(normalize_answer(p.gold_answer) for p in members)
            answer, count = counts.most_common(1)[0]
            expected += count
            parts.append(f"always '{answer}' on {len(members)} {kind.replace('_', '/')}")
    if not parts:
        return Baseline(rate=0.0, kind="none", note="numeric answers: no guessing baseline")
    kind = "chance" if parts[0].startswith("chance") and len(parts) == 1 else (
        "majority-class" if len(parts) == 1 else "mixed")
    return Baseline(rate=expected / len(problems), kind=kind, note="; ".join(parts))


def _grade(c: Completion, p: Problem, fmt: ReasoningFormat, keep_text: bool, check: bool = False) -> dict[str, Any]:
    parsed = fmt.parse(c.text)
    v = grade_completion(c.text, p.gold_answer, p.choices, fmt)
    work: dict[str, Any] = {}
    if check and fmt.kind == "tags":  # a sample's own work checked, for the votes that weigh it
        w = check_work(c.text, p.prompt, fmt)
        work = {"work_status": w.status.value, "work_score": w.score}
        if w.repaired_answer is not None:
            # the weight is the one the serve-side repaired vote gives it (voting.ballot), ungrounded numbers included
            _, weight = ballot(VoteMode.REPAIRED, w.repaired_answer, w)
            work |= {"repaired_answer": w.repaired_answer, "repaired_score": weight,
                     "repaired_correct": answers_equal(w.repaired_answer, p.gold_answer)}
    rec: dict[str, Any] = {
        "answer_type": v.kind,
        "strict_answer": v.strict_answer,
        "strict_correct": v.strict_correct,
        "flexible_answer": v.flexible_answer,
        "flexible_correct": v.flexible_correct,
        "format_valid": parsed.valid,
        "reasoning_words": len((parsed.reasoning or "").split()),
        "completion_tokens": c.completion_tokens,
        "latency_s": round(c.latency_s, 3),
        **({"answer_forced": True} if c.forced_answer_tokens is not None else {}),
        **work,
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
        "target": target.spec, "backend": target.backend, "benchmark": single_benchmark(cfg), "problems": len(problems),
        "problem_ids_sha": ids, "format": fmt.name, "greedy": greedy.to_dict(),
        "sampled": sampled.to_dict() if sampled else None, "grading": "strict+flexible v1",
    }


def _load_done(out: Path, settings: dict[str, Any], fresh: bool) -> dict[str, dict[str, Any]]:
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


def load_problems(cfg: EvalConfig) -> list[Problem]:
    try:
        problems = sample_problems(load_benchmark(single_benchmark(cfg), cfg.data_dir), cfg.limit, cfg.seed)
    except (ValueError, FileNotFoundError) as e:
        raise EvalError(str(e)) from e
    if not problems:
        raise EvalError(f"benchmark {single_benchmark(cfg)!r} has no problems")
    return problems


def run_eval(cfg: EvalConfig, target: Target | None = None, backend: Any = None, show_progress: bool = True) -> EvalSummary:
    """Evaluate one target on `cfg.benchmark` (resuming finished problems); see the module doc."""
    fmt = get_format(cfg.format)
    target = target or parse_target(cfg.model, cfg.backend, cfg.adapter)
    problems = load_problems(cfg)
    out = Path(cfg.out) if cfg.out else default_out_dir(cfg, target)
    out.mkdir(parents=True, exist_ok=True)
    prefix = fmt.prefill if cfg.prefill else ""
    greedy = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=fmt.stop_sequences(), prefix=prefix, force_answer=cfg.force_answer,
                            grammar=fmt.grammar(after_prefill=bool(prefix)) if cfg.constrained else None)
    sampled = None
    if cfg.samples:
        sampled = replace(greedy, temperature=cfg.sample_temperature, n=cfg.samples,
                          seed=cfg.seed if cfg.seed is not None else 0)
    settings = _settings(cfg, target, problems, greedy, sampled, fmt)
    done = _load_done(out, settings, cfg.fresh)
    (out / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    todo = [p for p in problems if p.id not in done]

    error = None
    t0 = time.perf_counter()
    if todo and backend is None:
        try:
            backend = open_target(target, fmt, batch_size=cfg.batch_size, threads=cfg.threads,
                                  concurrency=cfg.concurrency, gpu_layers=cfg.gpu_layers)
        except Exception as e:  # a model that fails to load or a server that is down
            raise EvalError(f"cannot open {target.spec}: {e}") from e
    if todo and cfg.force_answer and not backend.renders_prompts:
        backend.close()
        raise EvalError(f"--force-answer continues a cut completion from its raw prompt, and {target.spec} "
                        "renders its own prompts (a server with no local chat template): evaluate it without "
                        "--force-answer, or the model file itself")
    model_name = getattr(backend, "model_name", target.model) if backend else target.model
    # A GGUF decodes continuously (the next problem starts as soon as one finishes, `concurrency` at
    # once), so each call takes several rounds of problems; results are written after each call.
    step = {"transformers": cfg.batch_size, "llama.cpp": 4 * cfg.concurrency}.get(target.backend, cfg.concurrency)
    records = dict(done)
    with (out / "samples.jsonl").open("a", encoding="utf-8") as fh, make_progress(
            "eval", remaining=False, disable=not show_progress) as progress:
        task = progress.add_task(target.label, total=len(problems), completed=len(done))
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            batch = [fmt.messages(p.prompt) for p in chunk]
            try:
                greedy_out = backend.chat(batch, reasoning_params(greedy, fmt))
                sample_out = backend.chat(batch, reasoning_params(sampled, fmt)) if sampled else [[] for _ in chunk]
                force_answers(backend, batch, greedy_out, greedy, fmt)
                if sampled:
                    force_answers(backend, batch, sample_out, sampled, fmt)
            except (BackendError, OSError, RuntimeError, ValueError) as e:
                # the engine failed (a server down, a context overflow, an out-of-memory): keep what is
                # done, mark the run partial and say why; a bug of ours (TypeError, ...) still raises
                error = f"{type(e).__name__}: {e}"
                break
            for p, (g,), samples in zip(chunk, greedy_out, sample_out):
                rec = {"id": p.id, "question": p.prompt, "gold": p.gold_answer, "subject": p.subject,
                       "level": p.level, "source": p.source, "prompt_tokens": g.prompt_tokens,
                       **_grade(g, p, fmt, keep_text=True),
                       "samples": [_grade(s, p, fmt, keep_text=cfg.keep_sample_text, check=True) for s in samples]}
                records[p.id] = rec
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
            graded = list(records.values())
            # one update, so a line printed to a log shows the count and the figures of the same moment
            progress.update(task, advance=len(chunk), description=f"{target.label}  strict {_rate(graded, 'strict_correct'):.1%}"
                            f"  flexible {_rate(graded, 'flexible_correct'):.1%}"
                            f"  format {_rate(graded, 'format_valid'):.1%}")
    if backend is not None and hasattr(backend, "close"):
        backend.close()
    ordered = [records[p.id] for p in problems if p.id in records]
    summary = summarise(ordered, problems, cfg, target, model_name, settings, out, time.perf_counter() - t0)
    summary.resumed = len(done)
    summary.partial = len(ordered) < len(problems)
    summary.error = error
    summary.write(out / "summary.json")
    return summary


def _rate(records: list[dict[str, Any]], key: str) -> float:
    return sum(bool(r[key]) for r in records) / len(records) if records else 0.0


def _accuracy(records: list[dict[str, Any]], key: str) -> Accuracy:
    n = len(records)
    correct = sum(bool(r[key]) for r in records)
    return Accuracy(value=correct / n if n else 0.0, ci95=wilson_interval(correct, n), correct=correct)


def summarise(records: list[dict[str, Any]], problems: list[Problem], cfg: EvalConfig, target: Target, model: str,
              settings: dict[str, Any], out: Path, seconds: float) -> EvalSummary:
    n = len(records)
    valid = sum(r["format_valid"] for r in records)
    k_max = min((len(r["samples"]) for r in records), default=0)
    maj: dict[str, dict[str, float]] = {rule: {} for rule in RULES}
    pak: dict[str, dict[str, float]] = {rule: {} for rule in RULES}
    for rule in RULES:
        answer, ok = f"{rule}_answer", f"{rule}_correct"
        for k in ks_for(k_max):
            per = [majority_correct([s[answer] for s in r["samples"]],
                                    [s["format_valid"] or rule == "flexible" for s in r["samples"]],
                                    [s[ok] for s in r["samples"]], k) for r in records]
            maj[rule][str(k)] = sum(per) / n
            pak[rule][str(k)] = sum(pass_at_k(len(r["samples"]), sum(s[ok] for s in r["samples"]), k)
                                    for r in records) / n
    checked, versus = checked_votes(records, k_max)
    all_samples = [s for r in records for s in r["samples"]]
    categories: dict[str, dict[str, dict[str, float]]] = {}
    for key in ("subject", "level", "source"):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in records:
            if r.get(key) is not None:
                groups[str(r[key])].append(r)
        if len(groups) > 1:
            categories[key] = {g: {"n": len(rs), "strict": _rate(rs, "strict_correct"),
                                   "flexible": _rate(rs, "flexible_correct"), "format": _rate(rs, "format_valid")}
                               for g, rs in sorted(groups.items())}
    done = {r["id"] for r in records}
    return EvalSummary(
        model=model, target=target.spec, backend=target.backend, benchmark=single_benchmark(cfg), n=n,
        strict=_accuracy(records, "strict_correct"), flexible=_accuracy(records, "flexible_correct"),
        baseline=baseline_of([p for p in problems if p.id in done]),
        format_compliance=valid / n if n else 0.0, format_ci95=wilson_interval(valid, n),
        mean_completion_tokens=sum(r["completion_tokens"] for r in records) / n if n else 0.0,
        mean_reasoning_words=sum(r["reasoning_words"] for r in records) / n if n else 0.0,
        seconds=round(seconds, 2), generation=settings, out_dir=str(out), samples_per_problem=k_max,
        maj_at_k=maj if k_max else {}, pass_at_k=pak if k_max else {},
        checked_at_k=checked, checked_vs_majority=versus,
        sample_format_compliance=_rate(all_samples, "format_valid") if all_samples else None,
        categories=categories, answers_forced=sum(bool(r.get("answer_forced")) for r in records),
    )


#: The votes that check the work, reported beside maj@k (see edgereason.voting).
CHECKED_MODES = ("verified", "best", "repaired")


def _ballots(samples: list[dict[str, Any]], mode: str, rule: str) -> tuple[list[Any], list[bool], list[bool], list[float]]:
    """(answers, valid, correct, scores) of one problem's samples for a vote of `mode` under `rule`.
    A repaired vote's ballots come from the calculator: a miscomputed chain votes for its recomputed
    answer (graded against the gold), weighted as the serve-side repaired vote weighs it."""
    from edgereason.work_check import STATUS_SCORE, WorkStatus

    answers, correct, scores = [], [], []
    for s in samples:
        if mode == "repaired" and "repaired_answer" in s and s[f"{rule}_answer"] is not None:
            answers.append(s["repaired_answer"])
            correct.append(bool(s["repaired_correct"]))
            scores.append(float(s.get("repaired_score", STATUS_SCORE[WorkStatus.CONSISTENT])))  # older results lack it
        else:
            answers.append(s[f"{rule}_answer"])
            correct.append(bool(s[f"{rule}_correct"]))
            scores.append(float(s["work_score"]))
    valid = [bool(s["format_valid"]) or rule == "flexible" for s in samples]
    return answers, valid, correct, scores


def _vote(samples: list[dict[str, Any]], mode: str, rule: str, k: int) -> tuple[float, bool]:
    answers, valid, correct, scores = _ballots(samples, mode, rule)
    return vote_correct("verified" if mode == "repaired" else mode, answers, valid, correct, k, scores)


def checked_votes(records: list[dict[str, Any]], k_max: int) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """verified@k, best@k and repaired@k per rule (mode -> rule -> k -> rate), and each against maj@k
    at the largest k on the same problems (flexible rule; exact McNemar on the answers each vote
    returns). Empty when the samples carry no work check (older results, or a format without a
    reasoning section)."""
    if not k_max or not records or not all("work_score" in s for r in records for s in r["samples"]):
        return {}, {}
    n = len(records)
    rates = {mode: {rule: {str(k): sum(_vote(r["samples"], mode, rule, k)[0] for r in records) / n
                           for k in ks_for(k_max)} for rule in RULES} for mode in CHECKED_MODES}
    majority = [_vote(r["samples"], "majority", "flexible", k_max)[1] for r in records]
    versus: dict[str, Any] = {"k": k_max, "majority": sum(majority) / n}
    for mode in CHECKED_MODES:
        mine = [_vote(r["samples"], mode, "flexible", k_max)[1] for r in records]
        b01, b10, p = mcnemar_exact(majority, mine)
        versus[mode] = {"rate": sum(mine) / n, "gained": b01, "lost": b10, "p": p}
    return rates, versus
