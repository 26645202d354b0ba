"""`edgereason train --method distill` (sequence-level knowledge distillation) and `--method rft`
(rejection-sampling fine-tuning, the model as its own teacher): a teacher writes `teacher_samples`
traces per training problem through the backends layer; only traces in the format, with the right
answer (math-verify) and arithmetic that checks out (the rationale check SFT applies to every
rationale) are kept, deduplicated, and written as a rationale file with a manifest; then SFT on it.

The teacher is any edgereason target (edgereason/targets.py): a GGUF or export folder on llama.cpp,
an HF folder on transformers, or an OpenAI-compatible URL such as a vLLM server with a 7B model
(`http://host:8000/v1#Qwen/Qwen2.5-7B-Instruct`). Sequence-level distillation needs no shared
tokenizer, so any teacher works.

Layout: `runs/<name>/teacher/` (traces.jsonl as they arrive, rationales.jsonl and manifest.json once
collection ends), `runs/<name>/sft/` (the SFT run), `runs/<name>/adapter` and `run.json`. Collection
resumes: problems already asked are not asked again; a teacher that fails stops the run with what it
kept so far on disk, never a dataset under the final name.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgereason.backends.base import Capability, SamplingParams
from edgereason.files import atomic_output, write_text_atomic
from edgereason.formats import ReasoningFormat, get_format
from edgereason.grading import grade_completion
from edgereason.models import EMBEDDED
from edgereason.problems import Problem
from edgereason.rationales import rationale_fault
from edgereason.targets import Target, open_target, parse_target
from edgereason.train.config import TrainConfig
from edgereason.train.runs import (
    FINISHED,
    RunResult,
    TrainSetupError,
    is_main_process,
    load_training_problems,
    main_process_first,
)

TEACHER_DIR, TRACES, KEPT, MANIFEST = "teacher", "traces.jsonl", "rationales.jsonl", "manifest.json"


def teacher_spec(cfg: TrainConfig) -> str:
    """The teacher's target: `teacher` for distill; for rft the model itself (with the adapter it
    continues: this spec runs it on transformers, `adapter_teacher` on llama.cpp where it can)."""
    if cfg.method == "distill":
        if not cfg.teacher:
            raise TrainSetupError("--method distill needs --teacher: a GGUF, an export folder, an HF folder or an "
                                  "OpenAI-compatible URL (http://host:port/v1#model)")
        return cfg.teacher
    if cfg.init_adapter:
        return f"{cfg.model}+{cfg.init_adapter}"
    if cfg.model in EMBEDDED:
        return cfg.model  # its GGUF on llama.cpp (teacher_target), with the chat template it ships with
    from edgereason.models import resolve_model

    gguf = resolve_model(cfg.model).gguf_path  # the model's own GGUF samples on llama.cpp, far faster on a CPU
    return str(gguf) if gguf is not None else cfg.model


def adapter_teacher(cfg: TrainConfig, out: Path) -> str | None:
    """rft continuing an adapter: the model's base GGUF with the adapter written as a GGUF LoRA
    (`out`/init-adapter-lora.gguf), sampled on llama.cpp, under the format grammar, rather than the
    PEFT model on transformers, which takes no grammar (sftC's adapter, 32 problems x 4 traces at 1
    thread: 143 s against 220 s); None for an architecture llama.cpp takes no LoRA for."""
    from transformers import AutoConfig

    from edgereason.gguf_layout import SUPPORTED, LoraLayout
    from edgereason.models import resolve_model
    from edgereason.train.lora_gguf import rollout_base_gguf, saved_lora_gguf

    if cfg.method != "rft" or cfg.init_adapter is None:
        return None
    model = resolve_model(cfg.model)
    hf_config = AutoConfig.from_pretrained(model.require_hf())
    if getattr(hf_config, "model_type", None) not in SUPPORTED:
        return None
    lora = saved_lora_gguf(cfg.init_adapter, LoraLayout.from_hf_config(hf_config), out / "init-adapter-lora.gguf")
    return f"{rollout_base_gguf(model, out)}+{lora}"


def teacher_target(spec: str) -> Target:
    """The teacher's target. An embedded model is a GGUF, so it samples on llama.cpp in process, which
    on a CPU is several times faster than transformers (an eval target of the same name is the
    transformers reference instead)."""
    return parse_target(spec, backend="llama.cpp" if spec in EMBEDDED else None)


def judge(text: str, p: Problem, fmt: ReasoningFormat) -> tuple[str | None, str | None, str | None]:
    """(reasoning, answer, None) for a trace worth training on, else (None, None, why it is rejected)."""
    parsed = fmt.parse(text)
    if not parsed.valid or parsed.reasoning is None or parsed.answer is None:
        return None, None, "out of format"
    if not grade_completion(text, p.gold_answer, p.choices, fmt).strict_correct:
        return None, None, "wrong answer"
    fault = rationale_fault(parsed.reasoning, parsed.answer)
    if fault is not None:
        return None, None, "arithmetic does not check out"
    return parsed.reasoning.strip(), parsed.answer.strip(), None


def asked_earlier(traces: Path, problems: list[Problem], log: Any = print) -> dict[str, list[dict[str, Any]]]:
    """The traces an interrupted collection already has, by problem id. A record whose question is not
    the one its id names now (a regenerated split reuses ids; logic-train's did) is asked again;
    records written before questions were recorded are taken as they are."""
    asked: dict[str, list[dict[str, Any]]] = {}
    if not traces.is_file():
        return asked
    questions = {p.id: p.question for p in problems}
    stale = 0
    for line in traces.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            break  # cut by an interruption: that problem is asked again
        if "question" in rec and rec["question"] != questions.get(rec["id"], rec["question"]):
            stale += 1
            continue
        asked[rec["id"]] = rec["traces"]
    if stale:
        log(f"  {stale} earlier traces answer other questions under the same ids: those problems are asked again")
    return asked


def collect(cfg: TrainConfig, problems: list[Problem], out: Path, log: Any = print) -> dict[str, Any]:
    """Ask the teacher for traces (resuming), keep the good ones, write rationales.jsonl and the manifest."""
    fmt = get_format(cfg.format)
    out.mkdir(parents=True, exist_ok=True)
    spec = adapter_teacher(cfg, out) or teacher_spec(cfg)
    target = teacher_target(spec)
    traces = out / TRACES
    asked = asked_earlier(traces, problems, log)
    todo = [p for p in problems if p.id not in asked]
    params = SamplingParams(max_tokens=cfg.teacher_max_tokens, temperature=cfg.teacher_temperature, top_p=1.0,
                            n=cfg.teacher_samples, seed=cfg.seed, stop=fmt.stop_sequences(), prefix=fmt.prefill)
    if todo:
        log(f"teacher {spec}: {cfg.teacher_samples} traces for each of {len(todo)} problems"
            + (f" ({len(asked)} asked earlier)" if asked else ""))
        try:
            backend = open_target(target, fmt, threads=cfg.teacher_threads, concurrency=cfg.teacher_concurrency)
        except Exception as e:  # a teacher that is down or cannot load: nothing was asked
            raise TrainSetupError(f"the teacher {spec} cannot be opened: {type(e).__name__}: {e}") from e
        if cfg.teacher_grammar and Capability.GRAMMAR in backend.supports:
            params = replace(params, grammar=fmt.grammar(after_prefill=True))
        log(f"  sampling {'under the format grammar' if params.grammar else 'unconstrained'}")
        step = max(1, cfg.teacher_concurrency)
        t0 = time.perf_counter()
        try:
            with traces.open("a", encoding="utf-8") as fh:
                for start in range(0, len(todo), step):
                    chunk = todo[start:start + step]
                    try:
                        rows = backend.chat([fmt.messages(p.prompt) for p in chunk], params)
                    except Exception as e:  # what was kept stays on disk; a re-run asks only the rest
                        raise TrainSetupError(f"the teacher {spec} failed after {len(asked)} problems "
                                              f"({type(e).__name__}: {e}); re-run to continue") from e
                    for p, completions in zip(chunk, rows):
                        asked[p.id] = [{"text": c.text, "finish_reason": c.finish_reason} for c in completions]
                        fh.write(json.dumps({"id": p.id, "question": p.question, "traces": asked[p.id]},
                                            ensure_ascii=False) + "\n")
                        fh.flush()
                    log(f"  {len(asked)}/{len(problems)} problems asked ({time.perf_counter() - t0:.0f} s)")
        finally:
            if hasattr(backend, "close"):
                backend.close()
    return _keep(cfg, problems, asked, fmt, out, spec)


def _keep(cfg: TrainConfig, problems: list[Problem], asked: dict[str, list[dict[str, Any]]], fmt: ReasoningFormat,
          out: Path, spec: str) -> dict[str, Any]:
    rejected: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    solved = 0
    for p in problems:
        seen: set[str] = set()
        mine = 0
        for t in asked.get(p.id, []):
            reasoning, answer, why = judge(t["text"], p, fmt)
            if why is not None or reasoning is None or answer is None:
                rejected[why or "out of format"] += 1
                continue
            key = " ".join(reasoning.lower().split())
            if key in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(key)
            mine += 1
            kept.append({"id": f"{p.id}-t{mine}", "question": p.prompt, "answer": p.gold_answer, "rationale": reasoning,
                         "source": p.source})
        solved += mine > 0
    traces = sum(len(v) for v in asked.values())
    manifest = {"teacher": spec, "method": cfg.method, "format": fmt.name, "problems": len(problems),
                "sampling": {"n": cfg.teacher_samples, "temperature": cfg.teacher_temperature,
                             "grammar": cfg.teacher_grammar,
                             "max_tokens": cfg.teacher_max_tokens, "seed": cfg.seed},
                "traces": traces, "kept": len(kept), "rejected": dict(rejected),
                "pass_rate": round(solved / len(problems), 4) if problems else 0.0,
                "trace_pass_rate": round(len(kept) / traces, 4) if traces else 0.0}
    if not kept:
        raise TrainSetupError(f"the teacher {spec} wrote no usable trace in {traces} ({dict(rejected)}); "
                              "a stronger teacher, more samples or a higher temperature may help")
    with atomic_output(out / KEPT) as tmp:  # the dataset exists whole or not at all
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def run_distill(cfg: TrainConfig, show_progress: bool = True) -> RunResult:
    """Collect the teacher's kept traces, then SFT on them (the same LoRA, run folder and report as SFT)."""
    from edgereason.console import make_console
    from edgereason.train.sft import run_sft

    console = make_console(quiet=not show_progress)
    root = cfg.run_dir
    record = root / "run.json"
    if record.is_file() and json.loads(record.read_text()).get("status") == FINISHED and not cfg.overwrite:
        raise TrainSetupError(f"{root} holds a finished run; pass --overwrite to replace it or choose another --name")
    problems = load_training_problems(cfg)[: cfg.teacher_problems or None]
    t0 = time.perf_counter()
    # One teacher for a distributed run: the main process asks it and writes the dataset; the others
    # read the manifest once it is there (main_process_first holds them at a barrier until then).
    with main_process_first():
        if is_main_process():
            if cfg.overwrite and root.exists():
                shutil.rmtree(root)
            manifest = collect(cfg, problems, root / TEACHER_DIR, log=console.print)
        else:
            manifest = json.loads((root / TEACHER_DIR / MANIFEST).read_text())
    console.print(f"kept {manifest['kept']} of {manifest['traces']} traces; {manifest['pass_rate']:.0%} of problems "
                  f"have one; rejected: {manifest['rejected']}")
    sft_cfg = cfg.model_copy(update={"method": "sft", "dataset": [str(root / TEACHER_DIR / KEPT)],
                                     "name": "sft", "output_root": root, "overwrite": False,
                                     "dataset_weights": None})
    result = run_sft(sft_cfg, show_progress)
    if not is_main_process():
        return result
    final = root / "adapter"
    with atomic_output(final) as tmp:
        shutil.copytree(result.adapter_dir, tmp)
    sft_run = json.loads((result.run_dir / "run.json").read_text())
    seconds = time.perf_counter() - t0
    write_text_atomic(record, json.dumps({
        "name": cfg.name, "status": FINISHED, "method": cfg.method, "config": cfg.model_dump(mode="json"),
        "teacher": manifest, "steps": result.steps, "stop_reason": result.stop_reason,
        "final_metrics": result.metrics, "wall_seconds": round(seconds, 1),
        "peak_rss_mb": sft_run.get("peak_rss_mb"), "sft_run": str(result.run_dir)}, indent=2) + "\n")
    (root / "report.md").write_text(
        f"# {cfg.method} run `{cfg.name}`\n\nTeacher `{manifest['teacher']}`: {manifest['traces']} traces on "
        f"{manifest['problems']} problems, {manifest['kept']} kept ({manifest['trace_pass_rate']:.0%}); "
        f"{manifest['pass_rate']:.0%} of problems have a kept trace. Rejected: {manifest['rejected']}.\n\n"
        f"Then SFT on them: [sft/report.md](sft/report.md).\n", encoding="utf-8")
    return RunResult(root, final, result.steps, result.stop_reason, result.metrics, seconds)
