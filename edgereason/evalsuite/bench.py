"""`edgereason bench`: speed and memory of GGUF artifacts on this device.

Per artifact and thread count (each in a fresh process, see bench_worker): load time, prompt
processing (pp) and generation (tg) tokens/s at llama-bench's reference shape (512/128), ms/token,
time to first token and end-to-end latency of real reasoning answers, problems/minute, peak RSS and
file size; warm-up, repeats, median/min/max. Also the effect of context depth, and device profiles:
whether model + KV cache fit a memory budget (computed from GGUF metadata, then confirmed by running
under that limit with RLIMIT_AS).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from edgereason.backends.chat_template import ChatTemplate, TemplateError
from edgereason.config import StageConfig
from edgereason.data import load_benchmark
from edgereason.formats import get_format
from edgereason.gguf_meta import gguf_info
from edgereason.gpu_layers import GPU_COMPUTE_RESERVE_BYTES, GpuLayers, plan_offload
from edgereason.models import DEFAULT_MODEL, resolve_model
from edgereason.plots import pyplot, save_figure
from edgereason.servers import python_module
from edgereason.versions import versions


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    memory_gib: float  # what the device has
    usable_gib: float  # what a model process may take (the OS and other apps keep the rest)
    gpu_gib: float | None = None  # memory the GPU may use for the model; None: no GPU
    unified: bool = False  # the GPU shares the device's memory (Jetson, Apple silicon, iGPUs)

    @property
    def gpu(self) -> bool:
        return self.gpu_gib is not None


PROFILES = {
    "edge-4gb": DeviceProfile("edge-4gb", 4, 2.5),
    "edge-8gb": DeviceProfile("edge-8gb", 8, 6.0),
    # a Jetson Orin Nano 8 GB: CUDA on memory shared with the CPU
    "jetson-orin-nano-8gb": DeviceProfile("jetson-orin-nano-8gb", 8, 6.0, gpu_gib=6.0, unified=True),
    # a laptop with a 4 GB discrete GPU (Vulkan or CUDA) and 16 GB of RAM
    "laptop-gpu-4gb": DeviceProfile("laptop-gpu-4gb", 16, 12.0, gpu_gib=3.6),
    "cloud-gpu": DeviceProfile("cloud-gpu", 80, 72, gpu_gib=76),
}
# Process overhead beyond weights and KV cache (Python, llama.cpp compute buffers), measured ~200 MB
# for the 135M model here; rounded up.
RUNTIME_OVERHEAD_MB = 320


class BenchConfig(StageConfig):
    """What to benchmark and at which shapes."""

    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL], description="GGUF files or model names.")
    threads: list[int] = Field(default_factory=lambda: [1, os.cpu_count() or 1], description="Thread counts to compare.")
    pp: int = Field(512, ge=1, description="Prompt-processing tokens (llama-bench pp).")
    tg: int = Field(128, ge=1, description="Generated tokens (llama-bench tg).")
    repeats: int = Field(3, ge=1, description="Measured repetitions (median/min/max reported).")
    warmup: int = Field(1, ge=0, description="Unmeasured warm-up repetitions.")
    n_ctx: int = Field(2048, ge=256, description="Context length the model is loaded with.")
    contexts: list[int] = Field(default_factory=lambda: [128, 512, 1024], description="Prompt lengths for the context-effect table.")
    problems: int = Field(3, ge=0, description="GSM8K problems answered end to end (TTFT, latency, problems/min).")
    answer_tokens: int = Field(192, ge=1, description="Max tokens of those answers.")
    vote_ks: list[int] = Field(default_factory=lambda: [1, 4, 8, 16],
                               description="maj@k costs measured (k samples decoded together); [] to skip.")
    serve: bool = Field(False, description="Also benchmark the server against raw llama-server: throughput at 1-16 "
                        "clients, TTFT, maj@k against llama-batched-bench, and a load test.")
    slots: int = Field(8, ge=1, description="llama-server slots in the server benchmark.")
    load_clients: int = Field(64, ge=1, description="Concurrent clients in the server load test.")
    load_seconds: float = Field(60.0, gt=0, description="Duration of the server load test.")
    device_profile: str | None = Field(None, description=f"Check the fit on a device: {', '.join(PROFILES)}. On a "
                                       "profile with a GPU, the weights and KV cache --gpu-layers offloads count against "
                                       "its GPU memory and the rest against its RAM.")
    gpu_layers: GpuLayers = Field("auto", description="Layers offloaded in the device-profile fit: auto (as many as "
                                  "fit the profile's GPU), all, or a number.")
    out: Path | None = Field(None, description="Output folder (default: results/bench-<time>).")


def fit(path: Path, profile: DeviceProfile, n_ctx: int, gpu_layers: str = "auto") -> dict[str, Any]:
    """Whether weights + KV cache for `n_ctx` fit the profile; the largest context and parallel
    sequences that do. On a profile with a GPU, the offloaded layers' weights and KV cache (and
    llama.cpp's compute reserve) count against the GPU's memory and the rest against the RAM; on
    unified memory both come out of the one pool."""
    shape = gguf_info(path)
    budget = profile.usable_gib * 2**30 - RUNTIME_OVERHEAD_MB * 2**20
    free = budget - path.stat().st_size
    per_tok = shape["kv_bytes_per_token"]
    need = path.stat().st_size + per_tok * n_ctx + RUNTIME_OVERHEAD_MB * 2**20
    max_ctx = int(max(0, free) // per_tok)
    out: dict[str, Any] = {
        "profile": profile.name, "usable_gib": profile.usable_gib, "n_ctx": n_ctx,
        "estimated_mb": round(need / 2**20, 1), "kv_mb": round(per_tok * n_ctx / 2**20, 1),
        "fits": need <= profile.usable_gib * 2**30,
        "max_context": min(max_ctx, shape["context_length"] or max_ctx),
        "max_parallel_sequences_at_n_ctx": int(max(0, free) // (per_tok * n_ctx)),
        **shape,
    }
    if profile.gpu_gib is not None:
        gpu_budget = int(profile.gpu_gib * 2**30)
        plan = plan_offload(path, gpu_layers, n_ctx, per_tok, gpu_budget)
        gpu_need = plan.gpu_bytes + (GPU_COMPUTE_RESERVE_BYTES if plan.layers else 0)
        ram_need = plan.cpu_bytes + RUNTIME_OVERHEAD_MB * 2**20
        fits_gpu = gpu_need <= gpu_budget
        fits_ram = (gpu_need + ram_need if profile.unified else ram_need) <= profile.usable_gib * 2**30
        out["offload"] = {**plan.to_dict(), "gpu_need_mb": round(gpu_need / 2**20, 1),
                          "ram_need_mb": round(ram_need / 2**20, 1), "gpu_budget_mb": round(gpu_budget / 2**20, 1),
                          "unified_memory": profile.unified, "fits_gpu": fits_gpu, "fits_ram": fits_ram}
        out["fits"] = fits_gpu and fits_ram
    return out


def _run_worker(spec: dict, memory_limit_bytes: int | None = None, timeout: float = 900) -> dict:
    def limit() -> None:  # runs in the child before exec
        if memory_limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    proc = subprocess.run(python_module("edgereason.evalsuite.bench_worker", json.dumps(spec)), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if memory_limit_bytes else None)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    libs = versions("llama-cpp-python", "torch", "transformers")
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(), "libraries": libs}


def _chat_prompts(model: Path, n: int) -> list[str]:
    """Real GSM8K questions in the reasoning format, rendered with the model's own chat template
    (the GGUF's, or an OpenVINO folder's tokenizer config)."""
    if n == 0:
        return []
    from edgereason.models import EMBEDDED

    fmt = get_format()
    fallback = next((e.chat_template for e in EMBEDDED.values() if e.chat_template and e.gguf_file == model.name), None)
    try:
        if model.is_dir():
            config = json.loads((model / "tokenizer_config.json").read_text())
            jinja = model / "chat_template.jinja"
            template = ChatTemplate(jinja.read_text() if jinja.is_file() else config["chat_template"])
        else:
            template = ChatTemplate.from_gguf_file(model, fallback)
    except (TemplateError, KeyError, OSError):
        return []
    return [template.render(fmt.messages(p.question)) + fmt.prefill for p in load_benchmark("gsm8k")[:n]]


def run_bench(cfg: BenchConfig, progress: Any = None) -> dict[str, Any]:
    """Measure every model × thread count, the context effect and the device-profile fit."""
    results: dict[str, Any] = {"machine": machine(), "config": cfg.model_dump(mode="json"), "artifacts": []}
    fmt = get_format()
    for name in cfg.models:
        openvino = (Path(name) / "openvino_model.xml").is_file()
        resolved = None if openvino else resolve_model(name)
        path = Path(name) if resolved is None else resolved.require_gguf()
        lora = resolved.adapter if resolved is not None else None  # an export whose ladder chose base + LoRA
        size = sum(f.stat().st_size for f in path.glob("*.bin")) if openvino else path.stat().st_size
        size += lora.stat().st_size if lora else 0
        target = {"model": str(path), "lora": str(lora) if lora else None}  # what each worker loads
        art: dict[str, Any] = {"model": name, "file": str(path), "lora": target["lora"],
                               "size_mb": round(size / 2**20, 1),
                               "engine": "openvino" if openvino else "llama.cpp", "runs": []}
        chat = _chat_prompts(path, cfg.problems)
        for threads in cfg.threads:
            if progress:
                progress(f"{path.name} · {threads} thread(s)")
            spec = {**target, "n_ctx": cfg.n_ctx, "threads": threads, "pp": cfg.pp, "tg": cfg.tg,
                    "warmup": cfg.warmup, "repeats": cfg.repeats, "chat": chat if threads == max(cfg.threads) else [],
                    "answer_tokens": cfg.answer_tokens, "stop": fmt.stop_sequences(),
                    "vote_ks": cfg.vote_ks if threads == max(cfg.threads) else [],
                    "grammar": fmt.grammar(after_prefill=True), "engine": art["engine"]}
            art["runs"].append({"threads": threads, **_run_worker(spec)})
        results["artifacts"].append(art)
        if openvino:  # the context table and device fit read GGUF metadata
            continue
        art["context"] = []
        for c in cfg.contexts:
            if c + 32 > cfg.n_ctx:
                continue
            if progress:
                progress(f"{path.name} · context {c}")
            r = _run_worker({**target, "n_ctx": cfg.n_ctx, "threads": max(cfg.threads), "pp": c, "tg": 32,
                             "warmup": 0, "repeats": 1})
            art["context"].append({"prompt_tokens": c, **r})
        if cfg.device_profile:
            profile = PROFILES.get(cfg.device_profile)
            if profile is None:
                raise ValueError(f"unknown device profile {cfg.device_profile!r}; choose {', '.join(PROFILES)}")
            f = fit(path, profile, cfg.n_ctx, cfg.gpu_layers)
            if not profile.gpu:
                if progress:
                    progress(f"{path.name} · under a {profile.usable_gib} GiB limit")
                confirm = _run_worker({**target, "n_ctx": cfg.n_ctx, "threads": max(cfg.threads), "pp": 64,
                                       "tg": 8, "warmup": 0, "repeats": 1}, int(profile.usable_gib * 2**30))
                f["confirmed_under_limit"] = "error" not in confirm
                f["confirm_detail"] = confirm.get("error") or f"peak RSS {confirm['peak_rss_mb']:.0f} MB"
            art["device_profile"] = f
    if cfg.serve:
        from edgereason.evalsuite.serve_bench import run_serve_bench

        if progress:
            progress(f"server: overhead and {cfg.load_clients} clients for {cfg.load_seconds:.0f} s")
        first = resolve_model(cfg.models[0])
        results["serve"] = run_serve_bench(first.require_gguf(), max(cfg.threads), slots=cfg.slots,
                                           load_clients=cfg.load_clients, load_seconds=cfg.load_seconds,
                                           repeats=cfg.repeats, adapter=first.adapter)
    return results


def write_bench(results: dict[str, Any], out: Path) -> Path:
    """bench.json, bench.md and plots."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    m = results["machine"]
    lines = ["# edgereason bench", "", f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; "
             f"llama-cpp-python {m['libraries'].get('llama-cpp-python')}; Python {m['python']}", "",
             "| artifact | size MB | threads | load s | pp tok/s | tg tok/s (min–max) | ms/token | TTFT s | answer s "
             "| problems/min | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in results["artifacts"]:
        for r in a["runs"]:
            if "error" in r:
                lines.append(f"| {Path(a['file']).name} | {a['size_mb']} | {r['threads']} | failed: {r['error']} |||||||| |")
                continue
            tg = r["tg_tok_s"]
            lines.append(
                f"| {Path(a['file']).name} | {a['size_mb']} | {r['threads']} | {r['load_s']:.2f} | {r['pp_tok_s']['median']:.0f} | "
                f"{tg['median']:.1f} ({tg['min']:.1f}–{tg['max']:.1f}) | {r['ms_per_token']:.1f} | "
                + (f"{r['ttft_s']['median']:.2f} | {r['answer_s']['median']:.1f} | {r['problems_per_min']:.1f}"
                   if "ttft_s" in r else " | | ")
                + f" | {r['peak_rss_mb']:.0f} |")
    lines += _engine_ratios(results["artifacts"])
    vote_rows = [(a, r) for a in results["artifacts"] for r in a["runs"] if r.get("voting")]
    if vote_rows:
        lines += ["", "maj@k cost on llama.cpp: k samples of one reasoning answer decoded together "
                  "(grammar-constrained, T=0.7), relative to one sample.", "",
                  "| artifact | k | wall s | tokens | × one sample |", "|---|---|---|---|---|"]
        lines += [f"| {Path(a['file']).name} | {k} | {v['seconds']:.1f} | {v['tokens']} | {v['x_single']:.2f} |"
                  for a, r in vote_rows for k, v in r["voting"].items()]
    ctx_rows = [(a, c) for a in results["artifacts"] for c in a.get("context", []) if "error" not in c]
    if ctx_rows:
        lines += ["", "Context effect (all threads): prompt processing at each length, then 32 tokens generated at that depth.", "",
                  "| artifact | prompt tokens | pp tok/s | tg tok/s at depth |", "|---|---|---|---|"]
        lines += [f"| {Path(a['file']).name} | {c['prompt_tokens']} | {c['pp_tok_s']['median']:.0f} | {c['tg_tok_s']['median']:.1f} |"
                  for a, c in ctx_rows]
    fits = [a for a in results["artifacts"] if "device_profile" in a]
    if fits:
        lines += ["", "| artifact | profile | n_ctx | estimated MB | fits | confirmed under limit | max context | parallel seqs at n_ctx |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in fits:
            f = a["device_profile"]
            lines.append(f"| {Path(a['file']).name} | {f['profile']} ({f['usable_gib']} GiB usable) | {f['n_ctx']} | "
                         f"{f['estimated_mb']} | {'yes' if f['fits'] else 'no'} | "
                         f"{f.get('confirmed_under_limit', 'n/a')} ({f.get('confirm_detail', '')}) | {f['max_context']} | "
                         f"{f['max_parallel_sequences_at_n_ctx']} |")
        offloads = [(a, a["device_profile"]["offload"]) for a in fits if "offload" in a["device_profile"]]
        if offloads:
            lines += ["", "GPU offload (--gpu-layers): the offloaded layers' weights and KV cache, plus llama.cpp's "
                      "compute reserve, against the GPU's memory; the rest against the RAM.", "",
                      "| artifact | requested | layers on GPU | GPU need / budget MB | RAM need MB | unified | fits |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {Path(a['file']).name} | {o['requested']} | {o['layers_on_gpu']}/{o['total_layers']} | "
                      f"{o['gpu_need_mb']} / {o['gpu_budget_mb']} | {o['ram_need_mb']} | {o['unified_memory']} | "
                      f"{'yes' if o['fits_gpu'] and o['fits_ram'] else 'no'} |" for a, o in offloads]
    plots = _plots(results, out)
    if "serve" in results:
        from edgereason.evalsuite.serve_bench import serve_bench_markdown, write_serve_plot

        lines += serve_bench_markdown(results["serve"])
        plots.append(write_serve_plot(results["serve"], out))
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    report = out / "bench.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _engine_ratios(arts: list[dict[str, Any]]) -> list[str]:
    """OpenVINO against the first llama.cpp artifact of the same run, thread count by thread count."""
    anchor = next((a for a in arts if a.get("engine", "llama.cpp") == "llama.cpp"), None)
    others = [a for a in arts if a.get("engine") == "openvino"]
    if anchor is None or not others:
        return []
    base = {r["threads"]: r for r in anchor["runs"] if "error" not in r}
    lines = ["", f"OpenVINO against llama.cpp ({Path(anchor['file']).name}) in the same run (ratio > 1: OpenVINO faster):",
             "", "| artifact | threads | tg × llama.cpp | pp × llama.cpp | TTFT × llama.cpp | peak RSS × llama.cpp |",
             "|---|---|---|---|---|---|"]
    for a in others:
        for r in a["runs"]:
            b = base.get(r["threads"])
            if b is None or "error" in r:
                continue
            ttft = (f"{r['ttft_s']['median'] / b['ttft_s']['median']:.2f}" if "ttft_s" in r and "ttft_s" in b else "")
            lines.append(f"| {Path(a['file']).name} | {r['threads']} | {r['tg_tok_s']['median'] / b['tg_tok_s']['median']:.2f} | "
                         f"{r['pp_tok_s']['median'] / b['pp_tok_s']['median']:.2f} | {ttft} | "
                         f"{r['peak_rss_mb'] / b['peak_rss_mb']:.2f} |")
    return lines


def _plots(results: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()

    arts = results["artifacts"]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    threads = sorted({r["threads"] for a in arts for r in a["runs"]})
    w = 0.8 / max(1, len(threads))
    for i, t in enumerate(threads):
        for ax, key, title in ((axes[0], "pp_tok_s", "prompt processing"), (axes[1], "tg_tok_s", "generation")):
            vals = [next((r[key]["median"] for r in a["runs"] if r["threads"] == t and key in r), 0) for a in arts]
            ax.bar([j + i * w for j in range(len(arts))], vals, w, label=f"{t} thread(s)")
            ax.set_title(f"{title} (tokens/s)")
    for ax in axes:
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(arts))], [Path(a["file"]).name for a in arts],
                      rotation=15, ha="right", fontsize=8)
        ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "speed.png"))
    if any(a.get("context") for a in arts):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for a in arts:
            rows = [c for c in a.get("context", []) if "error" not in c]
            if rows:
                ax.plot([c["prompt_tokens"] for c in rows], [c["tg_tok_s"]["median"] for c in rows], "o-",
                        label=Path(a["file"]).name)
        ax.set_xlabel("context depth (tokens)")
        ax.set_ylabel("generation tokens/s")
        ax.set_title("generation speed vs context depth")
        ax.legend(fontsize=7)
        paths.append(save_figure(fig, out / "context.png"))
    return paths


def default_bench_dir() -> Path:
    return Path("results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
