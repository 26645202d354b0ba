"""`edgereason pipeline`: train → export → eval → bench as one resumable job, one report.

Each stage runs as its own `edgereason <stage>` process, exactly the command a user would type
(printed before it runs), so the pipeline needs no stage imports (stages depend on `edgereason`, not
the reverse), every stage gets a fresh process (memory is returned between stages on a small box),
and each stage's own resume logic applies: a finished training run, a verified export, finished
eval problems and an existing bench are skipped on a re-run. The report reads the stages' typed
results (`edgereason.results`).

Eval compares the models on the same problems, each on llama.cpp (the engine that serves them):
the base model's GGUF, the trained model exported without loss (F16), the quantized export that is
served, and, where the base is itself a GGUF, that base with the adapter as a GGUF LoRA (what
export's quality ladder chooses when requantizing loses too much). The main benchmark is the one
the recipe trains for; the transfer set (GSM8K, logic, ARC) shows what happens elsewhere. Every
difference carries its paired test.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from pydantic import Field
from rich.console import Console

from edgereason.cli_options import stage_command
from edgereason.config import StageConfig, find_config
from edgereason.console import PIPED_WIDTH, make_console
from edgereason.data import GENERATED
from edgereason.paired import SIGNIFICANT
from edgereason.results import BenchResults, ComparisonRow, EvalSummary, ExportManifest, PairedDifference, TrainRun, read_rows
from edgereason.servers import python_module

# The hybrid preset shortened to fit the pipeline's half hour on 2 cores: 80 SFT steps (the preset's 120
# reach a dev loss of 0.12, 80 already 0.124; 40 stopped at 0.27 and left arith flexible at the base's
# level, 14% -> 16%, p = 0.8, in a fresh-clone run) without LoRA dropout (1.15x the SFT steps' speed,
# docs/results/bench-train-sft-preset; a fifth of an epoch needs no regularizing; 90 steps with it took
# 32.6 min on the AMD EPYC), and 8 GRPO steps without the curriculum's pass-rate measurement (4 minutes
# of its own): enough to show the stage's reward trend (its quarters) in the report; at full length
# GRPO lowered what SFT reached (docs/sft.md), so its steps are the first to give when time is short
# (10 steps took the run to 30 min 12 s on a slow hour of the AMD EPYC).
# A quarter of the SFT rows ask the arith chains for a letter, a yes/no or a true/false
# (`arith-train-forms`): chosen on held-out data (arith-dev, and logic-train as it then was: a third
# of its questions were the logic test set's; docs/sft.md), where arith alone fell below the base on
# logic (-8.3 points, p = 0.014) and this mix did not (-2.0, p = 0.67), for 5 points of arith-dev
# (p = 0.07). Half and half cost arith 9-11 points (p <= 0.001).
SHORT_HYBRID = ("stage_settings.sft.max_steps=80", "stage_settings.sft.save_steps=40", "stage_settings.sft.dev_size=24",
                "stage_settings.sft.lora_dropout=0.0", "stage_settings.sft.dataset=[arith-train, arith-train-forms]",
                "stage_settings.sft.dataset_weights=[0.75, 0.25]",
                "stage_settings.grpo.max_steps=8", "stage_settings.grpo.save_steps=4",
                "stage_settings.grpo.curriculum=none")


class PipelineConfig(StageConfig):
    """One end-to-end run. Paths: runs/<name>, exports/<name>, results/<name>."""

    name: str = Field("pipeline-smollm2", description="Names the training run, export and results folders.")
    model: str = Field("smollm2-135m", description="Base model.")
    train_config: str | None = Field("cpu-smollm2-sft-grpo", description="TrainConfig preset or YAML for the training "
                                     "stage: the SFT → GRPO hybrid by default (cpu-smollm2 for GRPO alone).")
    train_set: list[str] = Field(
        default_factory=lambda: list(SHORT_HYBRID),
        description="TrainConfig overrides (key=value, dotted for stage settings) on top of train_config (repeatable).")
    quant: str = Field("q4_k_m", description="GGUF quant type served and evaluated.")
    calibration_problems: int = Field(32, ge=4, description="Training problems the imatrix is calibrated on (export).")
    answer_problems: int = Field(16, ge=0, description="Training problems of export's answer-level check.")
    eval_benchmark: str = Field("arith", description="The benchmark the recipe trains for (base vs trained vs quantized).")
    eval_limit: int = Field(100, ge=1, description="Problems of it (the same problems for every target).")
    transfer: dict[str, int] = Field(default_factory=lambda: {"gsm8k": 20, "logic": 20, "arc-easy": 20},
                                     description="Transfer benchmarks and their problem counts (0 = skip).")
    eval_max_tokens: int = Field(192, ge=16, description="Max tokens per answer in eval.")
    maj_k: int = Field(4, ge=0, description="Samples per problem for maj@k/pass@k on the GGUF (0 = skip).")
    maj_limit: int = Field(12, ge=1, description="Problems for the maj@k run.")
    bench_threads: list[int] = Field(default_factory=lambda: [1, 2], description="Thread counts for the bench.")
    bench_repeats: int = Field(2, ge=1, description="Bench repetitions.")
    runs_root: Path = Field(Path("runs"), description="Where training runs go.")
    exports_root: Path = Field(Path("exports"), description="Where exports go.")
    results_root: Path = Field(Path("results"), description="Where eval/bench results and the report go.")


class PipelineError(RuntimeError):
    pass


def _stage(console: Console, title: str, argv: list[str], log: Path) -> float:
    """Run one stage command, teeing its output to a log; returns the wall time."""
    console.rule(f"[bold]{title}")
    # One line, to copy, and not read as markup: rich dropped `--set 'x.dataset=[a, b]'`'s list.
    console.print(f"$ edgereason {shlex.join(argv)}", style="dim", soft_wrap=True, markup=False, highlight=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = python_module("edgereason.cli", *argv)
    if console.is_terminal:  # let the stage draw its own progress bars; its outputs are its record
        rc = subprocess.run(cmd).returncode
    else:
        # A pipe is 80 columns to rich, which folds the stages' tables letter by letter; a log has no width.
        env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", str(PIPED_WIDTH))}
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                console.out(line.rstrip("\n"), highlight=False)
            rc = proc.wait()
    if rc != 0:
        raise PipelineError(f"stage '{title}' failed (exit {rc}); see {log}. Fix the cause and re-run: "
                            "finished stages are skipped.")
    return time.perf_counter() - t0


def _paths(cfg: PipelineConfig) -> dict[str, Path]:
    export = cfg.exports_root / cfg.name
    return {"run": cfg.runs_root / cfg.name, "export": export, "results": cfg.results_root / cfg.name,
            "trained": export / "model-f16.gguf", "quantized": export / f"model-{cfg.quant}.gguf",
            "lora": export / "adapter-lora-f16.gguf"}


def _eval_targets(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(label, eval target) of every model the pipeline evaluates, the base first."""
    p, base = _paths(cfg), _base_target(cfg.model)
    targets = [("base", base), ("trained (F16)", str(p["trained"])),
               (f"trained ({cfg.quant.upper()})", str(p["quantized"]))]
    if base.endswith(".gguf") and p["lora"].is_file():
        targets.append((f"trained (base {Path(base).stem.rsplit('.', 1)[-1]} + LoRA)", f"{base}+{p['lora']}"))
    return targets


def _base_target(model: str) -> str:
    """The base model as a GGUF target (its own file for embedded models)."""
    from edgereason.models import resolve_model

    resolved = resolve_model(model)
    return str(resolved.gguf_path) if resolved.gguf_path else model


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> Path:
    console = console or make_console()
    p = _paths(cfg)
    logs = p["results"] / "logs"
    timings: dict[str, float] = {}

    run_json = p["run"] / "run.json"
    if run_json.is_file() and TrainRun.read(run_json).status == "finished":
        console.print(f"[dim]train: {p['run']} already finished, skipped[/]")
        timings["train"] = 0.0
    else:
        argv = ["train", "--name", cfg.name, "--model", cfg.model, "--output-root", str(cfg.runs_root)]
        if cfg.train_config:
            argv += ["--config", str(find_config(cfg.train_config))]
        for s in cfg.train_set:
            argv += ["--set", s]
        timings["train"] = _stage(console, "1/4 train (LoRA)", argv, logs / "train.log")

    timings["export"] = _stage(console, "2/4 export (merge → GGUF → quantize → verify)",
                               ["export", "gguf", "--adapter", str(p["run"] / "adapter"), "--quant", cfg.quant,
                                "--out", str(p["export"]), "--calibration-problems", str(cfg.calibration_problems),
                                "--answer-problems", str(cfg.answer_problems)], logs / "export.log")

    targets = [t for _, t in _eval_targets(cfg)]
    benches = {cfg.eval_benchmark: cfg.eval_limit, **{b: n for b, n in cfg.transfer.items() if n}}
    t0 = time.perf_counter()
    for bench, limit in benches.items():
        argv = ["eval", "--model", targets[0], *[a for t in targets[1:] for a in ("--compare", t)], "--benchmark", bench,
                "--limit", str(limit), "--max-tokens", str(cfg.eval_max_tokens), "--out", str(p["results"] / "eval" / bench)]
        _stage(console, f"3/4 eval {bench}: base vs trained vs {cfg.quant}" + (" vs base + LoRA" if len(targets) > 3 else ""),
               argv, logs / f"eval-{bench}.log")
    timings["eval"] = time.perf_counter() - t0
    # the model card gains the evals of this export's files (its model-index)
    _stage(console, "3/4 model card with the evals", ["export", "card", str(p["export"]), "--eval", str(p["results"] / "eval")],
           logs / "card.log")
    if cfg.maj_k:
        timings["eval maj@k"] = _stage(
            console, f"3/4 eval maj@{cfg.maj_k} on the {cfg.quant} GGUF",
            ["eval", "--model", str(p["quantized"]), "--benchmark", cfg.eval_benchmark, "--limit", str(cfg.maj_limit),
             "--samples", str(cfg.maj_k), "--max-tokens", str(cfg.eval_max_tokens), "--out", str(p["results"] / "maj")],
            logs / "maj.log")

    if (p["results"] / "bench" / "bench.json").is_file():
        console.print("[dim]bench: already measured, skipped[/]")
        timings["bench"] = 0.0
    else:
        argv = ["bench", "--models", str(p["quantized"]), "--repeats", str(cfg.bench_repeats), "--problems", "2",
                "--device-profile", "edge-4gb", "--out", str(p["results"] / "bench")]
        for t in cfg.bench_threads:
            argv += ["--threads", str(t)]
        timings["bench"] = _stage(console, "4/4 bench (this device)", argv, logs / "bench.log")

    report = write_pipeline_report(cfg, timings, list(benches))
    console.rule("[bold green]done")
    console.print(f"report: {report}")
    console.print(f"serve the result: [bold]edgereason serve --model {p['export']}[/]")
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _delta(row: ComparisonRow, rule: str) -> str:
    if rule not in row.delta:
        return ""
    return _difference(row.delta[rule], row.p_value[rule])


def _difference(delta: float, p: float) -> str:
    mark = " **significant**" if p < SIGNIFICANT else " (not significant)"
    return f"{100 * delta:+.1f} pts, p = {p:.3g}{mark}"


def _paired_with_f16(row: ComparisonRow, f16: ComparisonRow) -> PairedDifference | None:
    """A deployed form of the trained model (quantized, base + LoRA) against its own F16, flexible,
    paired by problem: what the export costs, apart from what training gained."""
    return row.versus.get(f16.target, {}).get("flexible")


def _versus_f16(row: ComparisonRow, f16: ComparisonRow) -> str:
    d = _paired_with_f16(row, f16)
    return "" if d is None else _difference(d.delta, d.p_value) + f" (+{d.discordant[0]} / -{d.discordant[1]})"


def _significant_loss(d: PairedDifference | None) -> bool | None:
    """Whether a pairing shows significantly fewer problems solved; None when there was no pairing."""
    return None if d is None else d.delta < 0 and d.p_value < SIGNIFICANT


# The note's suggested bound: about one paired standard error on 300 held-out problems at this
# model's 40% (48 discordant of 300: 2.3 points), so a quant within sampling noise of the merged model passes.
GATE_POINTS = 3.0


def _export_cost_note(rows: list[ComparisonRow], labels: list[str], cfg: PipelineConfig, export: Path) -> list[str]:
    """A line under the main table when the quantized model answers significantly fewer problems
    than its F16: the fixed `quant` lost part of what training gained. It names what this report
    measured as keeping it (the F16, the base + LoRA unless it lost too) and how to measure other
    quants: the ladder gated on accuracy paired with the merged model on held-out problems, since on a
    model this small the export's token and answer-identity checks do not tell a quant that keeps the
    accuracy (docs/measurements.md)."""
    d = _paired_with_f16(rows[2], rows[1])
    if d is None or not _significant_loss(d):
        return []
    f16 = export / "model-f16.gguf"
    dev = f"{cfg.eval_benchmark}-dev"
    held_out = dev if dev in GENERATED else "HELD_OUT.jsonl"  # never the benchmark that reports the result
    serve = [f"the F16 (`edgereason serve --model {f16}`)"]
    if len(rows) > 3 and _significant_loss(_paired_with_f16(rows[3], rows[1])) is False:
        serve.append(f"the base + LoRA (`edgereason serve --model {cfg.model} "
                     f"--adapter {export}`)")
    return ["", f"**The {labels[2]} answers significantly fewer problems than its F16** ({100 * d.delta:+.1f} pts, "
            f"{d.discordant[1]} lost / {d.discordant[0]} gained, p = {d.p_value:.3g}): the fixed `quant` lost part of "
            f"what training gained. Of what this report measured, serve {' or '.join(serve)}. To have the export "
            f"choose the smallest quant that keeps the accuracy, gate its ladder on held-out problems, each candidate "
            f"paired with the merged model (`edgereason export gguf --adapter {cfg.runs_root / cfg.name / 'adapter'} "
            f"--out {export}-gated --target-accuracy-drop {GATE_POINTS:g} --accuracy-data {held_out}`)."]


def _trend(seen: list[float]) -> tuple[float, float]:
    """The mean of the first and of the last quarter of a logged figure (one value each when there are
    fewer than eight). One GRPO step scores one problem's samples, so its first and last steps alone
    can point either way: a 10-step stage read 1.3 -> 0.77 in reward, its first and last two steps 0.89 -> 1.07."""
    w = max(1, len(seen) // 4)
    return sum(seen[:w]) / w, sum(seen[-w:]) / w


def _stage_lines(run_dir: Path, stages: list[dict]) -> list[str]:
    """Each stage of a hybrid run with the figures that show its effect on what it optimises: the SFT
    stage's training and dev loss, the GRPO stage's rewards, from its first steps to its last."""
    lines = ["Each stage continues the previous stage's LoRA.", "",
             "| stage | steps | wall s | peak RSS MB | effect (mean of the first → last quarter of logged steps) |",
             "|---|---|---|---|---|"]
    for s in stages:
        rows = [json.loads(line) for line in (run_dir / s["stage"] / "metrics.jsonl").read_text().splitlines()
                if line.strip()] if (run_dir / s["stage"] / "metrics.jsonl").is_file() else []
        effect = []
        for key, label in (("loss", "train loss"), ("eval_loss", "dev loss"), ("reward", "reward"),
                           ("rewards/derived/mean", "derived"), ("rewards/steps/mean", "steps"), ("format_compliance", "format")):
            seen = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            if len(seen) >= 2:
                first, last = _trend(seen)
                effect.append(f"{label} {first:.3g} → {last:.3g}")
        lines.append(f"| {s['stage']} | {s.get('steps')} | {s.get('wall_seconds')} | {s.get('peak_rss_mb')} | "
                     f"{'; '.join(effect) or '–'} |")
    return lines + ["", f"Per stage: `{run_dir}/<stage>/report.md`."]


def _handoff_lines(export: Path) -> list[str]:
    """What the export hands to other runtimes (export/handoff.py): the template, Modelfiles, the card."""
    manifest = json.loads((export / "manifest.json").read_text())
    setup, handoff = manifest.get("chat_setup"), manifest.get("handoff") or {}
    if not setup:
        return []
    files = [*handoff.get("modelfiles", []), handoff.get("card"), setup.get("file")]
    return ["", "Runs elsewhere: every merged GGUF's chat template carries the format's system prompt and prefill "
            f"(`llama-server -m ... --jinja`, LM Studio), with {', '.join(f'`{f}`' for f in files if f)} beside it "
            f"(`ollama create NAME -f {export}/Modelfile`; the model card for the Hub: `edgereason push {export} --repo "
            "user/name`)."]


def write_pipeline_report(cfg: PipelineConfig, timings: dict[str, float], benches: list[str]) -> Path:
    """One report.md from the stages' typed results, with their plots copied beside it."""
    p = _paths(cfg)
    results = p["results"]
    labels = [label for label, _ in _eval_targets(cfg)]
    run = TrainRun.read(p["run"] / "run.json")
    stages = getattr(run, "stages", None) or []
    method = " → ".join(s["stage"].split("-", 1)[-1].upper() for s in stages) if stages else "GRPO"
    lines = [f"# edgereason pipeline: {cfg.name}", "",
             f"Base model **{cfg.model}** → {method} LoRA (`{p['run']}/adapter`) → GGUF (`{p['export']}`).", "",
             "| stage | wall time |", "|---|---|"]
    lines += [f"| {k} | {'skipped (done before)' if v == 0 else f'{v:.0f} s'} |" for k, v in timings.items()]

    lines += ["", "## Training", ""]
    if stages:
        lines += _stage_lines(p["run"], stages)
    else:
        lines.append(f"{run.steps} GRPO steps ({run.stop_reason}), {run.seconds_per_step:.1f} s/step, "
                     f"peak RSS {run.peak_rss_mb:.0f} MB, rollouts on {run.rollout_engine}, "
                     f"{'bf16' if run.bf16 else 'fp32'}; curriculum at the end: {run.curriculum}.")
        if run.final_metrics:
            lines += ["", "| metric (last steps) | value |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in run.final_metrics.items()]

    manifest = ExportManifest.read(p["export"] / "manifest.json")
    lines += ["", "## Export (each artifact verified against the merged model)", "",
              "| artifact | size MiB | bits/weight | top-1 agreement | off near-ties | PPL (ref) | mean KL "
              f"| greedy answers = merged ({cfg.answer_problems} problems) | status |",
              "|---|---|---|---|---|---|---|---|---|"]
    for a in manifest.artifacts.values():
        v = a.verification
        sure = "" if v is None or v.top1_confident is None else v.top1_confident
        same = "" if v is None or not v.answers else f"{v.answers['answer_agreement']:.0%}"
        checks = (f"{v.top1_agreement} | {sure} | {v.perplexity} ({v.reference_perplexity}) | {v.mean_kl} | {same}" if v
                  else "(the reference) | | | | ")
        lines.append(f"| {a.file} | {a.size_bytes / 2**20:.1f} | {a.bits_per_weight or ''} | {checks} | {a.status} |")

    lines += _handoff_lines(p["export"])
    lines += ["", "## Eval: base vs trained vs quantized, the same problems, greedy", "",
              "**strict** counts only the answer in the format's answer field; **flexible** finds it anywhere by one rule "
              "per answer type, whatever the format, so a gain there is not a format gain. Δ and p: exact McNemar test "
              "against the base on the same problems; the last column pairs each deployed form of the trained model "
              "with its F16 the same way, which is what the export cost."]
    if len(labels) > 3:
        lines += ["", f"{labels[3]}: the base GGUF's own weights with the adapter applied by llama.cpp as a GGUF LoRA. "
                  "Export's quality ladder (`--target-agreement`, `--target-answers`) weighs it as a candidate beside "
                  f"the requantized merged weights (the {cfg.quant.upper()} row)."]
    lines.append("")
    for bench in benches:
        rows = read_rows(results / "eval" / bench / "comparison.json")
        lines += [f"### {bench} ({rows[0].n} problems; baseline {_pct(rows[0].baseline)})", "",
                  "| model | strict (95% CI) | flexible (95% CI) | format | Δ strict vs base | Δ flexible vs base "
                  "| Δ flexible vs its F16 (only it / only the F16) |", "|---|---|---|---|---|---|---|"]
        for i, (label, r) in enumerate(zip(labels, rows)):
            lines.append(f"| {label} | {_pct(r.strict)} ({_pct(r.strict_ci95[0])}–{_pct(r.strict_ci95[1])}) | "
                         f"{_pct(r.flexible)} ({_pct(r.flexible_ci95[0])}–{_pct(r.flexible_ci95[1])}) | {_pct(r.format)} | "
                         f"{_delta(r, 'strict')} | {_delta(r, 'flexible')} | {_versus_f16(r, rows[1]) if i > 1 else ''} |")
        if bench == cfg.eval_benchmark:
            lines += _export_cost_note(rows, labels, cfg, p["export"])
        lines.append("")
    maj = results / "maj" / "summary.json"
    if maj.is_file():
        s = EvalSummary.read(maj)
        ks = sorted(s.maj_at_k.get("flexible", {}), key=int)
        lines += [f"maj@k / pass@k (flexible) on the {cfg.quant.upper()} GGUF ({s.n} problems, T="
                  f"{s.generation['sampled']['temperature']}): "
                  + ", ".join(f"maj@{k} {_pct(s.maj_at_k['flexible'][k])} / pass@{k} {_pct(s.pass_at_k['flexible'][k])}"
                              for k in ks) + f"; greedy {_pct(s.flexible.value)}.", ""]

    measured = BenchResults.read(results / "bench" / "bench.json")
    m = measured.machine
    lines += [f"## Bench: {m['cpu']}, {m['cores']} cores", "",
              "| threads | load s | pp tok/s | tg tok/s | TTFT s | answer s | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in measured.artifacts[0]["runs"]:
        if "error" in r:
            continue
        lines.append(f"| {r['threads']} | {r['load_s']:.2f} | {r['pp_tok_s']['median']:.0f} | {r['tg_tok_s']['median']:.1f} | "
                     + (f"{r['ttft_s']['median']:.2f} | {r['answer_s']['median']:.1f}" if "ttft_s" in r else " | ")
                     + f" | {r['peak_rss_mb']:.0f} |")
    fit = measured.artifacts[0].get("device_profile")
    if fit:
        lines += ["", f"Device profile {fit['profile']}: fits = {fit['fits']} (estimated {fit['estimated_mb']} MB at "
                  f"n_ctx {fit['n_ctx']}, confirmed under the limit: {fit.get('confirmed_under_limit')}); "
                  f"largest context {fit['max_context']}, {fit['max_parallel_sequences_at_n_ctx']} parallel sequences."]

    pngs = [(p["run"] / "metrics.png", "train-metrics.png"),
            *[(results / "eval" / b / "models.png", f"eval-{b}.png") for b in benches],
            (results / "maj" / "accuracy_by_k.png", "maj-accuracy-by-k.png"), (results / "bench" / "speed.png", "bench-speed.png")]
    lines += ["", "## Plots", ""]
    for src, name in pngs:
        if src.is_file():
            shutil.copy(src, results / name)
            lines.append(f"![{name}]({name})")
    lines += ["", "## Next", "", f"Serve it: `edgereason serve --model {p['export']}`  ",
              f"Reproduce: `edgereason pipeline --name {cfg.name}`"]
    report = results / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (results / "pipeline.json").write_text(json.dumps({"timings": timings, "benchmarks": benches}, indent=2))
    return report


def run(cfg: PipelineConfig) -> None:
    try:
        run_pipeline(cfg, make_console())
    except (PipelineError, FileNotFoundError) as e:
        raise PipelineError(str(e)) from None


pipeline_command = stage_command(
    PipelineConfig, run, short={"model": "-m"}, errors=(PipelineError, FileNotFoundError),
    help="Train → export → eval → bench on the embedded default (about 30 minutes on 2 CPU cores); resumable.",
)
