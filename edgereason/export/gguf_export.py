"""`edgereason export gguf`: merge → llama.cpp convert → imatrix → quantize → verify, each artifact atomic.

Every artifact is produced in `<out>/.staging/`, verified against the merged HF model, and only then
moved to its final name; one that fails verification goes to `<out>/failed/` and the command exits
non-zero, so a good artifact is never replaced by a bad one. Re-running skips artifacts the
manifest records as passed for the same sources and settings.

With a target (`--target-agreement`, `--target-kl`, `--target-answers`) the quant types are the
ladder's candidates: each is made and verified, the smallest that meets every target is the
folder's `chosen` artifact (what `serve` and `bench` load from the folder), and the others are
recorded with their figures and removed (`ladder.png` plots them all).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edgereason.export.answers import training_problems
from edgereason.export.calibration import calibration_traces, compute_imatrix
from edgereason.export.config import GGUFExportConfig
from edgereason.export.files import ExportError, require_free_space, sha256_file
from edgereason.export.handoff import ChatSetup, chat_setup_for, write_modelfiles, write_template_file
from edgereason.export.llama_tools import (
    NEEDS_IMATRIX,
    convert_hf_to_gguf,
    convert_lora_to_gguf,
    quantize_gguf,
    set_chat_template,
)
from edgereason.export.manifest import Manifest, resolve_source
from edgereason.export.merge import load_hf, merged_checkpoint, parameter_count
from edgereason.export.verify import Reference, Verification, verify_gguf
from edgereason.formats import get_format

# Approximate bits per weight, for the disk-space check before anything is written.
_BPW = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k_m": 5.7, "q5_k_s": 5.5, "q5_0": 5.5,
        "q4_k_m": 4.9, "q4_k_s": 4.6, "q4_0": 4.5, "iq4_xs": 4.3, "iq4_nl": 4.5, "q3_k_m": 3.9, "q3_k_s": 3.5,
        "iq3_m": 3.7, "iq3_xxs": 3.1, "q2_k": 3.4, "iq2_m": 2.7}
_FULL_PRECISION = ("f32", "f16", "bf16", "q8_0")  # no imatrix: nothing to calibrate at 8 bits and above


@dataclass
class ExportResult:
    out_dir: Path
    artifacts: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    chosen: str | None = None


def meets_targets(ver: dict[str, Any], cfg: GGUFExportConfig) -> list[str]:
    """The targets a verified candidate misses (empty: it passes)."""
    missed = []
    if cfg.target_agreement is not None and ver["top1_agreement"] < cfg.target_agreement:
        missed.append(f"top-1 {ver['top1_agreement']:.3f} < {cfg.target_agreement}")
    if cfg.target_kl is not None and ver["mean_kl"] > cfg.target_kl:
        missed.append(f"KL {ver['mean_kl']:.4f} > {cfg.target_kl}")
    if cfg.target_answers is not None:
        share = (ver.get("answers") or {}).get("answer_agreement", 0.0)
        if share < cfg.target_answers:
            missed.append(f"answers {share:.3f} < {cfg.target_answers}")
    return missed


def serving_bytes(entry: dict[str, Any]) -> int:
    """What serving an artifact loads: the file, plus the base GGUF under a LoRA."""
    base = Path(entry["base_gguf"]) if entry.get("kind") == "gguf-lora" and entry.get("base_gguf") else None
    return int(entry["size_bytes"]) + (base.stat().st_size if base is not None and base.is_file() else 0)


def choose_smallest(entries: dict[str, dict], cfg: GGUFExportConfig) -> str | None:
    """The smallest verified candidate (by what serving loads) that meets every target."""
    passing = [(serving_bytes(e), name) for name, e in entries.items()
               if e["status"] == "ok" and not meets_targets(e["verification"], cfg)]
    return min(passing)[1] if passing else None


def export_gguf(cfg: GGUFExportConfig, console: Console | None = None) -> ExportResult:
    console = console or Console()
    out_dir, threads = cfg.out, cfg.threads
    quants = list(cfg.ladder if cfg.gated else cfg.quant)
    src = resolve_source(cfg.base, cfg.adapter, cfg.format)
    fmt = get_format(src.format_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging, failed_dir, logs = out_dir / ".staging", out_dir / "failed", out_dir / "logs"
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run are never trusted
    staging.mkdir()
    manifest = Manifest.open(out_dir)
    params = parameter_count(src.base.require_hf())
    need = params * (_BPW[cfg.outtype] + sum(_BPW.get(q, 8) for q in quants)) / 8 + (params * 4 if cfg.adapter else 0)
    require_free_space(out_dir, int(need * 1.1), f"{1 + len(quants)} GGUF files")
    result = ExportResult(out_dir)
    calibrated = cfg.imatrix or cfg.imatrix_file is not None
    missing = [q for q in quants if q in NEEDS_IMATRIX and not calibrated]
    if missing:
        raise ExportError(f"{', '.join(missing)} need an importance matrix: drop --no-imatrix or give --imatrix-file")
    if cfg.chat_setup:  # a template that cannot carry the setup is refused before anything is computed
        chat_setup_for(src.base.require_hf(), src.base.chat_template, fmt)

    # 1. merged HF checkpoint (the source of truth for conversion and the verification reference)
    hf_dir, merged_now = merged_checkpoint(src, manifest, cfg.force, console)
    if not merged_now and src.adapter is not None:
        result.skipped.append("merged-hf")
    model, tok = load_hf(src.base, src.adapter)
    manifest.start(src, params, tok.chat_template)
    setup = chat_setup_for(hf_dir, src.base.chat_template, fmt) if cfg.chat_setup else None
    # every GGUF carries the template: a change of setup redoes them all
    key = src.key + (f"+setup:{setup.sha256[:12]}" if setup else "")
    manifest.data["chat_setup"] = setup.to_dict() if setup else None
    template_file = write_template_file(out_dir, setup) if setup else None
    reference: Reference | None = None

    def get_reference() -> Reference:
        nonlocal reference
        if reference is None:
            console.print(f"[dim]reference: the merged model on {cfg.answer_problems} training problems[/]")
            problems = training_problems(cfg.answer_problems) if cfg.answer_problems else []
            reference = Reference(model, tok, src.format_name, problems)
            manifest.data["answer_check"] = {"problems": [p.id for p in problems], **(reference.answers.summary()
                                             if reference.answers else {})}
        return reference

    def produce(name: str, filename: str, kind: str, quant: str, settings: str, make: Callable[[Path], None],
                verify: Callable[[Path, Reference], Verification], **extra: Any) -> None:
        final = out_dir / filename
        # The check set is part of the key: a ladder compares candidates verified against one reference.
        artifact_key = f"{key}+{settings}+check:{cfg.answer_problems}"
        if not cfg.force and final.exists() and manifest.done(name, artifact_key):
            console.print(f"[dim]skip {filename}: already exported and verified[/]")
            result.skipped.append(name)
            result.artifacts[name] = manifest.data["artifacts"][name]
            return
        console.print(f"[bold]{kind} {quant}[/] → {filename}")
        staged = staging / filename
        t0 = time.perf_counter()
        make(staged)
        wall = round(time.perf_counter() - t0, 2)
        ver = verify(staged, get_reference())
        if ver.passed:
            os.replace(staged, final)
            entry = manifest.record(name, final, kind, quant, artifact_key, "ok", wall_s=wall,
                                    verification=ver.to_dict(), **extra)
            answers = ver.answers or {}
            console.print(
                f"  [green]verified[/] top-1 {ver.top1_agreement:.3f} ({ver.top1_confident:.3f} off near-ties), "
                f"KL {ver.mean_kl:.4f}, "
                f"PPL {ver.perplexity:.2f} (ref {ver.reference_perplexity:.2f})"
                + (f", answers {answers['answer_agreement']:.2f}, format {answers['format_compliance']:.2f}"
                   if answers else "") + f", {entry['size_bytes'] / 2**20:.1f} MiB"
            )
        else:
            failed_dir.mkdir(exist_ok=True)
            os.replace(staged, failed_dir / filename)
            manifest.record(name, failed_dir / filename, kind, quant, artifact_key, "failed", wall_s=wall,
                            verification=ver.to_dict(), **extra)
            console.print(f"  [red]verification failed[/]: {'; '.join(ver.problems)}")
            result.failed.append(name)
        result.artifacts[name] = manifest.data["artifacts"][name]

    def gguf_verify(q: str) -> Callable[[Path, Reference], Verification]:
        return lambda path, ref: verify_gguf(path, ref, q, threads, expected_template=setup.wrapped if setup else None)

    # 2. the unquantized GGUF every quant is made from (the quants inherit its chat template)
    f16_name = f"model-{cfg.outtype}.gguf"
    produce(cfg.outtype, f16_name, "gguf", cfg.outtype, cfg.outtype,
            functools.partial(_convert, hf_dir, log=logs / f"convert-{cfg.outtype}.log", outtype=cfg.outtype,
                              template_file=template_file),
            gguf_verify(cfg.outtype))
    f16 = out_dir / f16_name
    if not f16.is_file():
        raise ExportError(f"the {cfg.outtype} GGUF failed verification; not quantizing it (see {out_dir / 'manifest.json'})")

    # 3. the importance matrix, when some type below 8 bits will use it
    imatrix: Path | None = None
    if calibrated and any(q not in _FULL_PRECISION for q in quants):
        imatrix = _importance_matrix(cfg, f16, fmt, manifest, logs, console)

    # 4. the quants (the ladder's candidates when gated)
    for q in quants:
        use = imatrix if q not in _FULL_PRECISION else None
        # overrides keep tensors at more bits than the type's own recipe; at 8 bits they would only take bits away
        overrides = cfg.overrides if q not in _FULL_PRECISION else {}
        settings = f"{q}+imatrix:{manifest.data['imatrix']['sha256'][:12] if use else 'none'}+{overrides}"
        make = functools.partial(_quantize, f16, quant=q, log=logs / f"quantize-{q}.log", threads=threads,
                                 imatrix=use, overrides=overrides)
        produce(q, f"model-{q}.gguf", "gguf", q, settings, make, gguf_verify(q), imatrix=bool(use),
                overrides=overrides or None)

    # 5. the adapter alone, for llama.cpp's --lora on the base GGUF; with a ladder, a candidate too. It keeps
    # the trained delta in f16, which any 4-bit grid of the merged weights mostly rounds away.
    if cfg.lora and src.adapter is not None:
        _export_lora(cfg, src, produce, logs, out_dir, manifest)
        if cfg.gated and manifest.data["artifacts"].get("lora", {}).get("status") == "ok":
            quants.append("lora")

    if cfg.gated:
        _settle_ladder(cfg, quants, manifest, result, console)
    elif manifest.data.get("chosen") and not (out_dir / manifest.data["chosen"]).is_file():
        del manifest.data["chosen"]  # an earlier ladder's pick that is gone
    _hand_off(out_dir, manifest, setup, fmt, console)
    manifest.save()
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _convert(hf_dir: Path, out: Path, *, log: Path, outtype: str, template_file: Path | None) -> None:
    """llama.cpp's converter, then (with the reasoning setup) the same file with the wrapped template."""
    if template_file is None:
        convert_hf_to_gguf(hf_dir, out, log, outtype)
        return
    raw = out.with_name(out.stem + ".unwrapped.gguf")
    try:
        convert_hf_to_gguf(hf_dir, raw, log, outtype)
        set_chat_template(raw, out, template_file, log.with_name(log.stem + "-template.log"))
    finally:
        raw.unlink(missing_ok=True)


def _hand_off(out_dir: Path, manifest: Manifest, setup: ChatSetup | None, fmt: Any, console: Console) -> None:
    """The Ollama Modelfiles and the model card, from what the manifest now records."""
    from edgereason.export.model_card import write_card

    handoff: dict[str, Any] = {"modelfiles": [], "card": None}
    if setup is not None:
        handoff["modelfiles"] = write_modelfiles(out_dir, manifest.data, setup, fmt)
        if setup.note:
            console.print(f"[yellow]{setup.note}[/]")
    handoff["card"] = write_card(out_dir, manifest.data).name
    manifest.data["handoff"] = handoff
    console.print(f"[dim]hand-off: {', '.join([*handoff['modelfiles'], handoff['card']])}"
                  + (f", {setup.to_dict()['file']}" if setup else "") + "[/]")


def _quantize(f16: Path, out: Path, *, quant: str, log: Path, threads: int | None, imatrix: Path | None,
              overrides: dict[str, str]) -> None:
    quantize_gguf(f16, out, quant, log, threads, imatrix, overrides)


def _importance_matrix(cfg: GGUFExportConfig, f16: Path, fmt: Any, manifest: Manifest, logs: Path,
                       console: Console) -> Path:
    """The imatrix file for this export: given, already made for these sources, or computed now."""
    if cfg.imatrix_file is not None:
        if not cfg.imatrix_file.is_file():
            raise ExportError(f"--imatrix-file {cfg.imatrix_file} does not exist")
        manifest.data["imatrix"] = {"source": str(cfg.imatrix_file), "sha256": sha256_file(cfg.imatrix_file),
                                    "size_bytes": cfg.imatrix_file.stat().st_size}
        return cfg.imatrix_file
    out = cfg.out / "imatrix.gguf"
    recorded = manifest.data.get("imatrix") or {}
    settings = {"from": f16.name, "f16_sha256": manifest.data["artifacts"][cfg.outtype]["sha256"],
                "problems": cfg.calibration_problems, "data": cfg.calibration_data}
    if not cfg.force and out.is_file() and recorded.get("settings") == settings \
            and recorded.get("sha256") == sha256_file(out):
        console.print("[dim]skip imatrix.gguf: already computed for this model[/]")
        return out
    console.print(f"[bold]imatrix[/] calibrating on the model's own answers to {cfg.calibration_problems} "
                  f"training problems ({', '.join(cfg.calibration_data)})")
    t0 = time.perf_counter()
    from edgereason.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(f16), n_ctx=1024, threads=cfg.threads)
    try:
        calib = calibration_traces(backend, backend.template, fmt, logs / "calibration.jsonl", cfg.calibration_problems,
                                   cfg.calibration_data)
    finally:
        backend.close()
    compute_imatrix(f16, calib, out, logs / "imatrix.log", cfg.threads)
    wall = time.perf_counter() - t0
    manifest.data["imatrix"] = {
        "source": "llama-imatrix on the model's own reasoning traces", "file": out.name, "sha256": sha256_file(out),
        "size_bytes": out.stat().st_size, "settings": settings, "calibration": calib.to_dict(),
        "wall_s": round(wall, 1),
    }
    manifest.save()
    console.print(f"  {calib.valid_traces}/{calib.traces} traces format-valid; {wall:.0f} s")
    return out


def _settle_ladder(cfg: GGUFExportConfig, quants: list[str], manifest: Manifest, result: ExportResult,
                   console: Console) -> None:
    """Keep the smallest candidate that meets every target; record and remove the others (the base + LoRA
    candidate stays: it is written whenever `lora` is on)."""
    entries = {q: manifest.data["artifacts"][q] for q in quants if q in manifest.data["artifacts"]}
    chosen = choose_smallest(entries, cfg)
    targets = {"top1_agreement": cfg.target_agreement, "mean_kl": cfg.target_kl, "answer_agreement": cfg.target_answers}
    ladder = []
    for q, e in entries.items():
        missed = meets_targets(e["verification"], cfg) if e["status"] == "ok" else ["failed verification"]
        ladder.append({"quant": q, "file": e["file"], "size_bytes": serving_bytes(e), "passed": not missed, "missed": missed,
                       "top1_agreement": e["verification"]["top1_agreement"],
                       "top1_confident": e["verification"].get("top1_confident"), "mean_kl": e["verification"]["mean_kl"],
                       "answers": e["verification"].get("answers")})
    manifest.data["ladder"] = {"targets": targets, "candidates": ladder}
    if chosen is None:  # nothing is removed: the verified files stay, and so does an earlier pick
        manifest.save()
        wanted = ", ".join(f"{k} {v}" for k, v in targets.items() if v is not None)
        raise ExportError(f"no candidate of {', '.join(quants)} meets the targets ({wanted}); see {cfg.out / 'manifest.json'}")
    for q, e in entries.items():
        if q != chosen and q != "lora" and e["status"] == "ok":
            e["status"] = "rejected" if meets_targets(e["verification"], cfg) else "passed-not-smallest"
            (cfg.out / e["file"]).unlink(missing_ok=True)
            result.rejected.append(q)
    manifest.data["chosen"] = entries[chosen]["file"]
    result.chosen = entries[chosen]["file"]
    full = manifest.data["artifacts"][cfg.outtype]["size_bytes"]
    on_base = f" on {Path(entries[chosen]['base_gguf']).name}" if chosen == "lora" else ""
    console.print(f"[bold green]chosen[/] {entries[chosen]['file']}{on_base}: {serving_bytes(entries[chosen]) / full:.0%} "
                  f"of {cfg.outtype}, the smallest of {len(entries)} candidates meeting the targets")
    from edgereason.export.ladder_plot import ladder_plot

    ladder_plot(manifest.data, cfg.out / "ladder.png")
    manifest.save()


def _export_lora(cfg: GGUFExportConfig, src: Any, produce: Callable[..., None], logs: Path, out_dir: Path,
                 manifest: Manifest) -> None:
    base_gguf = src.base.gguf_path
    if base_gguf is None:  # a base with no GGUF of its own: convert it once for the check
        base_gguf = out_dir / f"base-{cfg.outtype}.gguf"
        if not base_gguf.is_file():
            convert_hf_to_gguf(src.base.require_hf(), base_gguf, logs / "convert-base.log", cfg.outtype)

    def lora_verify(path: Path, ref: Reference) -> Verification:
        return verify_gguf(base_gguf, ref, "lora", cfg.threads, lora_path=path)

    produce("lora", "adapter-lora-f16.gguf", "gguf-lora", "f16", "lora-f16",
            lambda p: convert_lora_to_gguf(src.adapter, src.base.require_hf(), p, logs / "convert-lora.log"),
            lora_verify, base_gguf=str(base_gguf))
