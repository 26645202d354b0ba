"""`edgereason export gguf`: merge → llama.cpp convert → quantize → verify, each artifact atomic.

Every artifact is produced in `<out>/.staging/`, verified against the merged HF model, and only then
moved to its final name; one that fails verification goes to `<out>/failed/` and the command exits
non-zero, so a good artifact is never replaced by a bad one. Re-running skips artifacts the
manifest records as passed for the same sources.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from edgereason.export.files import ExportError, require_free_space
from edgereason.export.llama_tools import QUANT_TYPES, convert_hf_to_gguf, convert_lora_to_gguf, quantize_gguf
from edgereason.export.manifest import Manifest, resolve_source
from edgereason.export.merge import load_hf, merge_adapter, parameter_count
from edgereason.export.verify import Reference, Verification, verify_gguf

# Approximate bits per weight, for the disk-space check before anything is written.
_BPW = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.5, "q5_0": 5.5,
        "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "q3_k_m": 3.9, "q2_k": 3.4}


@dataclass
class ExportResult:
    out_dir: Path
    artifacts: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def parse_quants(spec: str | list[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else spec
    quants = [q.strip().lower() for q in items if q.strip()]
    bad = [q for q in quants if q not in QUANT_TYPES]
    if bad:
        raise ExportError(f"unknown quant type(s) {', '.join(bad)}; choose from {', '.join(QUANT_TYPES)}")
    return quants


def export_gguf(
    out_dir: Path,
    base: str | None = None,
    adapter: str | Path | None = None,
    quants: str | list[str] = "q8_0,q4_k_m",
    outtype: str = "f16",
    lora_gguf: bool = True,
    format_name: str | None = None,
    force: bool = False,
    threads: int | None = None,
    console: Console | None = None,
) -> ExportResult:
    console = console or Console()
    quant_list = parse_quants(quants)
    if outtype not in ("f16", "bf16", "f32"):
        raise ExportError(f"--outtype must be f16, bf16 or f32, not {outtype!r}")
    src = resolve_source(base, adapter, format_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging, failed_dir, logs = out_dir / ".staging", out_dir / "failed", out_dir / "logs"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run are never trusted
    staging.mkdir()
    manifest = Manifest.open(out_dir)
    params = parameter_count(src.base.require_hf())
    need = params * (_BPW[outtype] + sum(_BPW[q] for q in quant_list)) / 8 + (params * 4 if adapter else 0)
    require_free_space(out_dir, int(need * 1.1), f"{1 + len(quant_list)} GGUF files")
    result = ExportResult(out_dir)
    key = src.key

    # 1. merged HF checkpoint (the source of truth for conversion and the verification reference)
    if src.adapter is not None:
        hf_dir = out_dir / "merged-hf"
        if force or not manifest.done("merged-hf", key):
            console.print(f"[bold]merge[/] {src.adapter} into {src.base.name}")
            t0 = time.perf_counter()
            merge_adapter(src.base, src.adapter, hf_dir)
            manifest.record("merged-hf", hf_dir, "hf", "f32", key, "ok", wall_s=round(time.perf_counter() - t0, 2))
        else:
            result.skipped.append("merged-hf")
    else:
        hf_dir = src.base.require_hf()
    model, tok = load_hf(src.base, src.adapter)
    manifest.start(src, params, tok.chat_template)
    reference: Reference | None = None

    def produce(name: str, filename: str, kind: str, quant: str, make, verify) -> None:
        nonlocal reference
        final = out_dir / filename
        if not force and final.exists() and manifest.done(name, key):
            console.print(f"[dim]skip {filename}: already exported and verified[/]")
            result.skipped.append(name)
            return
        console.print(f"[bold]{kind} {quant}[/] → {filename}")
        staged = staging / filename
        t0 = time.perf_counter()
        make(staged)
        wall = round(time.perf_counter() - t0, 2)
        if reference is None:
            reference = Reference(model, tok, src.format_name)
        ver: Verification = verify(staged, reference)
        if ver.passed:
            os.replace(staged, final)
            entry = manifest.record(name, final, kind, quant, key, "ok", wall_s=wall, verification=ver.to_dict())
            console.print(
                f"  [green]verified[/] top-1 {ver.top1_agreement:.3f}, prefix {ver.greedy_prefix_match:.2f}, "
                f"PPL {ver.perplexity:.2f} (ref {ver.reference_perplexity:.2f}), KL {ver.mean_kl:.4f}, "
                f"{entry['size_bytes'] / 2**20:.1f} MiB"
            )
        else:
            failed_dir.mkdir(exist_ok=True)
            os.replace(staged, failed_dir / filename)
            manifest.record(name, failed_dir / filename, kind, quant, key, "failed", wall_s=wall,
                            verification=ver.to_dict())
            console.print(f"  [red]verification failed[/]: {'; '.join(ver.problems)}")
            result.failed.append(name)
        result.artifacts[name] = manifest.data["artifacts"][name]

    def gguf_verify(q: str):
        return lambda path, ref: verify_gguf(path, ref, q, threads)

    f16_name = f"model-{outtype}.gguf"
    produce(outtype, f16_name, "gguf", outtype,
            lambda p: convert_hf_to_gguf(hf_dir, p, logs / f"convert-{outtype}.log", outtype), gguf_verify(outtype))
    f16 = out_dir / f16_name
    if not f16.is_file():
        raise ExportError(f"the {outtype} GGUF failed verification; not quantizing it (see {out_dir / 'manifest.json'})")
    for q in quant_list:
        produce(q, f"model-{q}.gguf", "gguf", q,
                lambda p, q=q: quantize_gguf(f16, p, q, logs / f"quantize-{q}.log", threads), gguf_verify(q))

    if lora_gguf and src.adapter is not None:
        base_gguf = src.base.gguf_path
        if base_gguf is None:  # a base with no GGUF of its own: convert it once for the check
            base_gguf = out_dir / f"base-{outtype}.gguf"
            if not base_gguf.is_file():
                convert_hf_to_gguf(src.base.require_hf(), base_gguf, logs / "convert-base.log", outtype)

        def lora_verify(path: Path, ref: Reference) -> Verification:
            return verify_gguf(base_gguf, ref, "lora", threads, lora_path=path)

        produce("lora", "adapter-lora-f16.gguf", "gguf-lora", "f16",
                lambda p: convert_lora_to_gguf(src.adapter, src.base.require_hf(), p, logs / "convert-lora.log"),
                lora_verify)
        manifest.data["artifacts"].get("lora", {})["base_gguf"] = str(base_gguf)
        manifest.save()
    shutil.rmtree(staging, ignore_errors=True)
    return result
