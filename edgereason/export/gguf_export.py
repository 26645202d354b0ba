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

from edgereason.console import make_console
from edgereason.export.answers import held_out_problems, training_problems
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
from edgereason.export.manifest import ExportSource, Manifest, resolve_source
from edgereason.export.merge import load_hf, merged_checkpoint, parameter_count
from edgereason.export.verify import Reference, Verification, verify_gguf
from edgereason.formats import ReasoningFormat, get_format
from edgereason.paired import SIGNIFICANT

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
    if cfg.target_accuracy_drop is not None:
        acc = ver.get("accuracy")
        if acc is None:
            missed.append("no accuracy check")
        elif acc["drop_points"] > cfg.target_accuracy_drop:
            missed.append(f"accuracy {acc['drop_points']:.1f} points below the merged model > {cfg.target_accuracy_drop:g}")
        elif acc["drop_points"] > 0 and acc["p_value"] < SIGNIFICANT:
            missed.append(f"accuracy significantly below the merged model ({acc['only_reference']} lost, "
                          f"{acc['only_it']} gained, p = {acc['p_value']:.2g})")
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


@dataclass(frozen=True)
class Artifact:
    """One file an export makes: how to make it and how to verify it against the merged model."""

    name: str  #: its manifest entry (the quant type, or "lora")
    filename: str
    kind: str  #: gguf | gguf-lora
    quant: str
    settings: str  #: what, besides the sources, decides its content (part of its key)
    make: Callable[[Path], None]
    verify: Callable[[Path, Reference], Verification]
    extra: dict[str, Any] = field(default_factory=dict)  #: recorded in its manifest entry


@dataclass
class ExportJob:
    """What the stages of one export share: its config, sources, manifest, key and reference."""

    cfg: GGUFExportConfig
    console: Console
    src: ExportSource
    fmt: ReasoningFormat
    manifest: Manifest
    quants: list[str]
    params: int
    setup: ChatSetup | None
    result: ExportResult
    key: str = ""  #: sources + chat setup: every artifact's key starts with it
    template_file: Path | None = None
    model: Any = None  #: the merged HF model and tokenizer, the verification reference
    tok: Any = None
    _reference: Reference | None = None

    @property
    def out(self) -> Path:
        return self.cfg.out

    @property
    def staging(self) -> Path:
        return self.out / ".staging"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def reference(self) -> Reference:
        """The merged model's logits and answers, computed on first use (a re-run that skips every
        artifact never computes it)."""
        if self._reference is None:
            cfg = self.cfg
            n = cfg.answer_problems
            held_out = (held_out_problems(cfg.accuracy_data, cfg.accuracy_problems)
                        if cfg.target_accuracy_drop is not None else [])
            self.console.print(f"[dim]reference: the merged model on {n} training problems"
                               + (f" and {len(held_out)} held-out {cfg.accuracy_data} problems" if held_out else "")
                               + "[/]")
            problems = training_problems(n) if n else []
            self._reference = Reference(self.model, self.tok, self.src.format_name, problems, held_out)
            answers = self._reference.answers.summary() if self._reference.answers else {}
            self.manifest.data["answer_check"] = {"problems": [p.id for p in problems], **answers}
            if self._reference.accuracy is not None:
                self.manifest.data["accuracy_check"] = {"data": cfg.accuracy_data,
                                                        "problems": [p.id for p in held_out],
                                                        **self._reference.accuracy.summary()}
            else:  # an earlier gated export's check no longer describes what is verified now
                self.manifest.data.pop("accuracy_check", None)
        return self._reference

    def gguf_verify(self, quant: str) -> Callable[[Path, Reference], Verification]:
        expected = self.setup.wrapped if self.setup else None
        return lambda path, ref: verify_gguf(path, ref, quant, self.cfg.threads, expected_template=expected)

    def produce(self, a: Artifact) -> None:
        """Make `a` in staging, verify it, and only then move it to its final name (a failure goes
        to failed/); skip it when the manifest records it verified under the same key."""
        final = self.out / a.filename
        # The check set is part of the key: a ladder compares candidates verified against one reference.
        artifact_key = f"{self.key}+{a.settings}+check:{self.cfg.answer_problems}" + (
            f"+accuracy:{self.cfg.accuracy_data}:{self.cfg.accuracy_problems}"
            if self.cfg.target_accuracy_drop is not None else "")
        if not self.cfg.force and final.exists() and self.manifest.done(a.name, artifact_key):
            self.console.print(f"[dim]skip {a.filename}: already exported and verified[/]")
            self.result.skipped.append(a.name)
            self.result.artifacts[a.name] = self.manifest.data["artifacts"][a.name]
            return
        self.console.print(f"[bold]{a.kind} {a.quant}[/] → {a.filename}")
        staged = self.staging / a.filename
        t0 = time.perf_counter()
        a.make(staged)
        wall = round(time.perf_counter() - t0, 2)
        ver = a.verify(staged, self.reference())
        if ver.passed:
            os.replace(staged, final)
            entry = self.manifest.record(a.name, final, a.kind, a.quant, artifact_key, "ok", wall_s=wall,
                                         verification=ver.to_dict(), **a.extra)
            answers, accuracy = ver.answers or {}, ver.accuracy or {}
            self.console.print(
                f"  [green]verified[/] top-1 {ver.top1_agreement:.3f} ({ver.top1_confident:.3f} off near-ties), "
                f"KL {ver.mean_kl:.4f}, "
                f"PPL {ver.perplexity:.2f} (ref {ver.reference_perplexity:.2f})"
                + (f", answers {answers['answer_agreement']:.2f}, format {answers['format_compliance']:.2f}"
                   if answers else "")
                + (f", accuracy {accuracy['accuracy']:.3f} (merged {accuracy['reference_accuracy']:.3f}, "
                   f"p = {accuracy['p_value']:.2g})" if accuracy else "") + f", {entry['size_bytes'] / 2**20:.1f} MiB"
            )
        else:
            failed = self.out / "failed"
            failed.mkdir(exist_ok=True)
            os.replace(staged, failed / a.filename)
            self.manifest.record(a.name, failed / a.filename, a.kind, a.quant, artifact_key, "failed", wall_s=wall,
                                 verification=ver.to_dict(), **a.extra)
            self.console.print(f"  [red]verification failed[/]: {'; '.join(ver.problems)}")
            self.result.failed.append(a.name)
        self.result.artifacts[a.name] = self.manifest.data["artifacts"][a.name]


def export_gguf(cfg: GGUFExportConfig, console: Console | None = None) -> ExportResult:
    """The export, stage by stage (each a function below): plan (every check before compute), merge,
    convert, calibrate, quantize, the LoRA, the ladder, the hand-off."""
    job = plan(cfg, console or make_console())
    hf_dir = merge(job)
    f16 = convert(job, hf_dir)
    quantize(job, f16, calibrate(job, f16))
    candidates = list(job.quants)
    # the adapter alone, for llama.cpp's --lora on the base GGUF; with a ladder, a candidate too. It keeps
    # the trained delta in f16, which any 4-bit grid of the merged weights mostly rounds away.
    if cfg.lora and job.src.adapter is not None:
        _export_lora(job)
        if cfg.gated and job.manifest.data["artifacts"].get("lora", {}).get("status") == "ok":
            candidates.append("lora")
    if cfg.gated:
        _settle_ladder(cfg, candidates, job.manifest, job.result, job.console)
    elif job.manifest.data.get("chosen") and not (cfg.out / job.manifest.data["chosen"]).is_file():
        del job.manifest.data["chosen"]  # an earlier ladder's pick that is gone
    _hand_off(cfg.out, job.manifest, job.setup, job.fmt, job.console)
    job.manifest.save()
    shutil.rmtree(job.staging, ignore_errors=True)
    return job.result


def plan(cfg: GGUFExportConfig, console: Console) -> ExportJob:
    """Resolve the sources and refuse, before anything is computed, what cannot work: too little disk,
    a type that needs an importance matrix without one, a chat template that cannot carry the setup."""
    quants = list(cfg.ladder if cfg.gated else cfg.quant)
    src = resolve_source(cfg.base, cfg.adapter, cfg.format)
    fmt = get_format(src.format_name)
    cfg.out.mkdir(parents=True, exist_ok=True)
    params = parameter_count(src.base.require_hf())
    need = params * (_BPW[cfg.outtype] + sum(_BPW.get(q, 8) for q in quants)) / 8 + (params * 4 if cfg.adapter else 0)
    require_free_space(cfg.out, int(need * 1.1), f"{1 + len(quants)} GGUF files")
    missing = [q for q in quants if q in NEEDS_IMATRIX and not cfg.calibrated]
    if missing:
        raise ExportError(f"{', '.join(missing)} need an importance matrix: drop --no-imatrix or give --imatrix-file")
    # The merged checkpoint keeps the base's tokenizer, so the base's template is the one every GGUF carries.
    setup = chat_setup_for(src.base.require_hf(), src.base.chat_template, fmt) if cfg.chat_setup else None
    job = ExportJob(cfg, console, src, fmt, Manifest.open(cfg.out), quants, params, setup, ExportResult(cfg.out))
    shutil.rmtree(job.staging, ignore_errors=True)  # leftovers of an interrupted run are never trusted
    job.staging.mkdir()
    return job


def merge(job: ExportJob) -> Path:
    """The merged HF checkpoint: the source of truth for conversion and the verification reference."""
    hf_dir, merged_now = merged_checkpoint(job.src, job.manifest, job.cfg.force, job.console)
    if not merged_now and job.src.adapter is not None:
        job.result.skipped.append("merged-hf")
    job.model, job.tok = load_hf(job.src.base, job.src.adapter)
    job.manifest.start(job.src, job.params, job.tok.chat_template)
    # every GGUF carries the template: a change of setup redoes them all
    job.key = job.src.key + (f"+setup:{job.setup.sha256[:12]}" if job.setup else "")
    job.manifest.data["chat_setup"] = job.setup.to_dict() if job.setup else None
    job.template_file = write_template_file(job.out, job.setup) if job.setup else None
    return hf_dir


def convert(job: ExportJob, hf_dir: Path) -> Path:
    """The unquantized GGUF every quant is made from (the quants inherit its chat template)."""
    outtype = job.cfg.outtype
    name = f"model-{outtype}.gguf"
    job.produce(Artifact(outtype, name, "gguf", outtype, outtype,
                         functools.partial(_convert, hf_dir, log=job.logs / f"convert-{outtype}.log", outtype=outtype,
                                           template_file=job.template_file),
                         job.gguf_verify(outtype)))
    f16 = job.out / name
    if not f16.is_file():
        raise ExportError(f"the {outtype} GGUF failed verification; not quantizing it (see {job.out / 'manifest.json'})")
    return f16


def calibrate(job: ExportJob, f16: Path) -> Path | None:
    """The importance matrix, when some type below 8 bits will use it."""
    if not job.cfg.calibrated or all(q in _FULL_PRECISION for q in job.quants):
        return None
    return _importance_matrix(job.cfg, f16, job.fmt, job.manifest, job.logs, job.console)


def quantize(job: ExportJob, f16: Path, imatrix: Path | None) -> None:
    """Each quant type (the ladder's candidates when gated)."""
    for q in job.quants:
        use = imatrix if q not in _FULL_PRECISION else None
        # overrides keep tensors at more bits than the type's own recipe; at 8 bits they would only take bits away
        overrides = job.cfg.overrides if q not in _FULL_PRECISION else {}
        settings = f"{q}+imatrix:{job.manifest.data['imatrix']['sha256'][:12] if use else 'none'}+{overrides}"
        make = functools.partial(quantize_gguf, f16, quant=q, log=job.logs / f"quantize-{q}.log", threads=job.cfg.threads,
                                 imatrix=use, tensor_types=overrides)
        job.produce(Artifact(q, f"model-{q}.gguf", "gguf", q, settings, make, job.gguf_verify(q),
                             {"imatrix": bool(use), "overrides": overrides or None}))


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
    targets = {"top1_agreement": cfg.target_agreement, "mean_kl": cfg.target_kl, "answer_agreement": cfg.target_answers,
               "accuracy_drop_points": cfg.target_accuracy_drop}
    ladder = []
    for q, e in entries.items():
        missed = meets_targets(e["verification"], cfg) if e["status"] == "ok" else ["failed verification"]
        ladder.append({"quant": q, "file": e["file"], "size_bytes": serving_bytes(e), "passed": not missed, "missed": missed,
                       "top1_agreement": e["verification"]["top1_agreement"],
                       "top1_confident": e["verification"].get("top1_confident"), "mean_kl": e["verification"]["mean_kl"],
                       "answers": e["verification"].get("answers"), "accuracy": e["verification"].get("accuracy")})
    manifest.data["ladder"] = {"targets": targets, "candidates": ladder}
    from edgereason.export.ladder_plot import ladder_plot

    if chosen is None:  # nothing is removed: the verified files stay, and so does an earlier pick
        manifest.save()
        # the plot is drawn all the same: how far each candidate fell short is what decides the next try
        ladder_plot({**manifest.data, "chosen": None}, cfg.out / "ladder.png")
        wanted = ", ".join(f"{k} {v}" for k, v in targets.items() if v is not None)
        raise ExportError(f"no candidate of {', '.join(quants)} meets the targets ({wanted}); see "
                          f"{cfg.out / 'manifest.json'} and {cfg.out / 'ladder.png'}")
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
    ladder_plot(manifest.data, cfg.out / "ladder.png")
    manifest.save()


def _export_lora(job: ExportJob) -> None:
    cfg, src, logs = job.cfg, job.src, job.logs
    base_gguf = src.base.gguf_path
    if base_gguf is None:  # a base with no GGUF of its own: convert it once for the check
        base_gguf = job.out / f"base-{cfg.outtype}.gguf"
        if not base_gguf.is_file():
            convert_hf_to_gguf(src.base.require_hf(), base_gguf, logs / "convert-base.log", cfg.outtype)

    def lora_verify(path: Path, ref: Reference) -> Verification:
        return verify_gguf(base_gguf, ref, "lora", cfg.threads, lora_path=path)

    adapter = src.adapter
    assert adapter is not None
    job.produce(Artifact("lora", "adapter-lora-f16.gguf", "gguf-lora", "f16", "lora-f16",
                         lambda p: convert_lora_to_gguf(adapter, src.base.require_hf(), p, logs / "convert-lora.log"),
                         lora_verify, {"base_gguf": str(base_gguf)}))
