"""`edgereason pipeline`: train → export → eval → bench as one resumable job, one report.

Each stage runs as its own `edgereason <stage>` process, exactly the command a user would type
(printed before it runs), so the pipeline needs no stage imports (stages depend on `edgereason`, not
the reverse), every stage gets a fresh process (memory is returned between stages on a small box),
and each stage's own resume logic applies: a finished training run, a verified export, finished
eval problems and an existing bench are skipped on a re-run.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from pydantic import Field
from rich.console import Console

from edgereason.config import StageConfig


class PipelineConfig(StageConfig):
    """One end-to-end run. Paths: runs/<name>, exports/<name>, results/<name>."""

    name: str = Field("pipeline-smollm2", description="Names the training run, export and results folders.")
    model: str = Field("smollm2-135m", description="Base model.")
    train_config: Path | None = Field(Path("configs/cpu-smollm2.yaml"), description="TrainConfig YAML for the GRPO stage.")
    train_set: list[str] = Field(default_factory=lambda: ["max_steps=8", "save_steps=2"],
                                 description="TrainConfig overrides (key=value) on top of train_config.")
    quant: str = Field("q4_k_m", description="GGUF quant type served and evaluated.")
    eval_benchmark: str = Field("gsm8k", description="Benchmark for the base/trained/quantized comparison.")
    eval_limit: int = Field(20, ge=1, description="Problems in that comparison (the same problems for every target).")
    eval_max_tokens: int = Field(192, ge=16, description="Max tokens per answer in eval.")
    maj_k: int = Field(4, ge=0, description="Samples per problem for maj@k/pass@k on the GGUF (0 = skip).")
    maj_limit: int = Field(10, ge=1, description="Problems for the maj@k run.")
    bench_threads: list[int] = Field(default_factory=lambda: [1, 2], description="Thread counts for the bench.")
    bench_repeats: int = Field(2, ge=1, description="Bench repetitions.")
    runs_root: Path = Field(Path("runs"), description="Where training runs go.")
    exports_root: Path = Field(Path("exports"), description="Where exports go.")
    results_root: Path = Field(Path("results"), description="Where eval/bench results and the report go.")


class PipelineError(RuntimeError):
    pass


def _find_config(path: Path) -> Path:
    """A config path as given, else relative to this checkout (so `configs/...` works from anywhere)."""
    if path.is_file():
        return path
    bundled = Path(__file__).resolve().parent.parent / path
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(f"config file {path} not found (also looked in {bundled.parent})")


def _stage(console: Console, title: str, argv: list[str], log: Path) -> float:
    """Run one stage command, teeing its output to a log; returns the wall time."""
    cmd = [sys.executable, "-m", "edgereason.cli", *argv]
    console.rule(f"[bold]{title}")
    console.print(f"$ edgereason {shlex.join(argv)}", style="dim")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if console.is_terminal:  # let the stage draw its own progress bars; its outputs are its record
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise PipelineError(f"stage '{title}' failed (exit {rc}). Fix the cause and re-run: finished stages are skipped.")
        return time.perf_counter() - t0
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if not line.startswith(("llama_", "load", "print_info", "Loading weights")):
                console.out(line.rstrip("\n"), highlight=False)
        rc = proc.wait()
    if rc != 0:
        raise PipelineError(f"stage '{title}' failed (exit {rc}); see {log}. Fix the cause and re-run: "
                            "finished stages are skipped.")
    return time.perf_counter() - t0


def run_pipeline(cfg: PipelineConfig, console: Console | None = None) -> Path:
    console = console or Console()
    run_dir = cfg.runs_root / cfg.name
    export_dir = cfg.exports_root / cfg.name
    results = cfg.results_root / cfg.name
    logs = results / "logs"
    gguf = export_dir / f"model-{cfg.quant}.gguf"
    adapter = run_dir / "adapter"
    timings: dict[str, float] = {}

    run_json = run_dir / "run.json"
    if run_json.is_file() and json.loads(run_json.read_text()).get("status") == "finished":
        console.print(f"[dim]train: {run_dir} already finished, skipped[/]")
        timings["train"] = 0.0
    else:
        argv = ["train", "--name", cfg.name, "--model", cfg.model, "--output-root", str(cfg.runs_root)]
        if cfg.train_config:
            argv += ["--config", str(_find_config(cfg.train_config))]
        for s in cfg.train_set:
            argv += ["--set", s]
        timings["train"] = _stage(console, "1/4 train (GRPO + LoRA)", argv, logs / "train.log")

    timings["export"] = _stage(console, "2/4 export (merge → GGUF → quantize → verify)",
                               ["export", "gguf", "--adapter", str(adapter), "--quant", cfg.quant, "--out", str(export_dir)],
                               logs / "export.log")

    eval_argv = ["eval", "--model", cfg.model, "--compare", f"{cfg.model}+{adapter}", "--compare", str(gguf),
                 "--benchmark", cfg.eval_benchmark, "--limit", str(cfg.eval_limit), "--max-tokens", str(cfg.eval_max_tokens),
                 "--out", str(results / "eval")]
    timings["eval"] = _stage(console, "3/4 eval (base vs trained vs quantized)", eval_argv, logs / "eval.log")
    if cfg.maj_k:
        timings["eval maj@k"] = _stage(
            console, f"3/4 eval maj@{cfg.maj_k} on the GGUF",
            ["eval", "--model", str(gguf), "--benchmark", cfg.eval_benchmark, "--limit", str(cfg.maj_limit),
             "--samples", str(cfg.maj_k), "--max-tokens", str(cfg.eval_max_tokens), "--out", str(results / "maj")],
            logs / "maj.log")

    if (results / "bench" / "bench.json").is_file():
        console.print("[dim]bench: already measured, skipped[/]")
        timings["bench"] = 0.0
    else:
        argv = ["bench", "--model", str(gguf), "--repeats", str(cfg.bench_repeats), "--problems", "2",
                "--device-profile", "edge-4gb", "--out", str(results / "bench")]
        for t in cfg.bench_threads:
            argv += ["--threads", str(t)]
        timings["bench"] = _stage(console, "4/4 bench (this device)", argv, logs / "bench.log")

    report = write_pipeline_report(cfg, timings)
    console.rule("[bold green]done")
    console.print(f"report: {report}")
    console.print(f"serve the result: [bold]edgereason serve --model {gguf}[/]")
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_pipeline_report(cfg: PipelineConfig, timings: dict[str, float]) -> Path:
    """One report.md from the stages' own JSON outputs, with their plots copied beside it."""
    results = cfg.results_root / cfg.name
    run_dir = cfg.runs_root / cfg.name
    export_dir = cfg.exports_root / cfg.name
    gguf = export_dir / f"model-{cfg.quant}.gguf"
    lines = [f"# edgereason pipeline: {cfg.name}", "",
             f"Base model **{cfg.model}** → GRPO LoRA (`{run_dir}/adapter`) → GGUF {cfg.quant.upper()} (`{gguf}`).", "",
             "| stage | wall time |", "|---|---|"]
    lines += [f"| {k} | {'skipped (done before)' if v == 0 else f'{v:.0f} s'} |" for k, v in timings.items()]

    run = json.loads((run_dir / "run.json").read_text())
    fm = run.get("final_metrics") or {}
    lines += ["", "## Training", "", f"{run.get('steps')} GRPO steps ({run.get('stop_reason')}), "
              f"{run.get('seconds_per_step', 0):.1f} s/step, peak RSS {run.get('peak_rss_mb', 0):.0f} MB."]
    if fm:
        lines += ["", "| metric (last steps) | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in fm.items()]

    manifest = json.loads((export_dir / "manifest.json").read_text())
    lines += ["", "## Export (each artifact verified against the merged model)", "",
              "| artifact | size MiB | bits/weight | top-1 agreement | PPL (ref) | mean KL | status |", "|---|---|---|---|---|---|---|"]
    for a in manifest["artifacts"].values():
        v = a.get("verification")
        checks = (f"{v['top1_agreement']} | {v['perplexity']} ({v['reference_perplexity']}) | {v['mean_kl']}"
                  if v else "(the reference) | | ")
        lines.append(f"| {a['file']} | {a['size_bytes'] / 2**20:.1f} | {a.get('bits_per_weight') or ''} | {checks} | {a['status']} |")

    comparison = json.loads((results / "eval" / "comparison.json").read_text())
    lines += ["", f"## Eval: {cfg.eval_benchmark}, the same {cfg.eval_limit} problems, greedy", "",
              "| target | accuracy (95% CI) | format compliance | mean tokens | Δ vs base | paired p |", "|---|---|---|---|---|---|"]
    for r in comparison:
        lo, hi = r["accuracy_ci95"]
        delta = f"{100 * r['delta']:+.1f} pts" if "delta" in r else ""
        p = f"{r['p_value']:.3f}" if "p_value" in r else ""
        lines.append(f"| `{r['target']}` | {_pct(r['accuracy'])} ({_pct(lo)}–{_pct(hi)}) | {_pct(r['format'])} | "
                     f"{r['tokens']:.0f} | {delta} | {p} |")
    maj = results / "maj" / "summary.json"
    if maj.is_file():
        s = json.loads(maj.read_text())
        ks = sorted(s["maj_at_k"], key=int)
        lines += ["", f"maj@k / pass@k on the GGUF ({s['n']} problems, T={s['generation']['sampled']['temperature']}): "
                  + ", ".join(f"maj@{k} {_pct(s['maj_at_k'][k])} / pass@{k} {_pct(s['pass_at_k'][k])}" for k in ks)
                  + f"; greedy {_pct(s['accuracy'])}."]

    bench = json.loads((results / "bench" / "bench.json").read_text())
    m = bench["machine"]
    lines += ["", f"## Bench: {m['cpu']}, {m['cores']} cores", "",
              "| threads | load s | pp tok/s | tg tok/s | TTFT s | answer s | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in bench["artifacts"][0]["runs"]:
        if "error" in r:
            continue
        lines.append(f"| {r['threads']} | {r['load_s']:.2f} | {r['pp_tok_s']['median']:.0f} | {r['tg_tok_s']['median']:.1f} | "
                     + (f"{r['ttft_s']['median']:.2f} | {r['answer_s']['median']:.1f}" if "ttft_s" in r else " | ")
                     + f" | {r['peak_rss_mb']:.0f} |")
    fit = bench["artifacts"][0].get("device_profile")
    if fit:
        lines += ["", f"Device profile {fit['profile']}: fits = {fit['fits']} (estimated {fit['estimated_mb']} MB at "
                  f"n_ctx {fit['n_ctx']}, confirmed under the limit: {fit.get('confirmed_under_limit')}); "
                  f"largest context {fit['max_context']}, {fit['max_parallel_sequences_at_n_ctx']} parallel sequences."]

    pngs = [(run_dir / "metrics.png", "train-metrics.png"), (results / "eval" / "models.png", "eval-models.png"),
            (results / "maj" / "accuracy_by_k.png", "maj-accuracy-by-k.png"), (results / "bench" / "speed.png", "bench-speed.png")]
    lines += ["", "## Plots", ""]
    for src, name in pngs:
        if src.is_file():
            shutil.copy(src, results / name)
            lines.append(f"![{name}]({name})")
    lines += ["", "## Next", "", f"Serve it: `edgereason serve --model {gguf}`  ", f"Reproduce: `edgereason pipeline --name {cfg.name}`"]
    report = results / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def pipeline_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML PipelineConfig (e.g. configs/pipeline-gpu-1b.yaml)."),
    name: Optional[str] = typer.Option(None, help="Run name (runs/<name>, exports/<name>, results/<name>)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model (default smollm2-135m)."),
    set_: list[str] = typer.Option([], "--set", help="Override a PipelineConfig field: key=value."),
) -> None:
    """Train → export → eval → bench on the embedded default (about 20 minutes on 2 CPU cores); resumable."""
    from edgereason.config import ConfigError

    console = Console()
    try:
        cfg = PipelineConfig.load(config, set_, name=name, model=model)
        run_pipeline(cfg, console)
    except (ConfigError, PipelineError, FileNotFoundError) as e:
        console.print(f"[red]pipeline stopped:[/] {e}")
        raise typer.Exit(1) from None
