"""`edgereason export openvino`: merged model → OpenVINO IR with NNCF-compressed weights, verified.

1. The merged checkpoint (shared with the GGUF export of the same folder).
2. Calibration traces: the model's own format-valid answers to training problems, rendered as
   served (the same source as the GGUF importance matrix; reused when the folder has them).
3. optimum-intel + NNCF in their own venv (edgereason.openvino_env): INT4 with AWQ and scale
   estimation on those traces, or INT8; the tokenizer converted with openvino-tokenizers. Or
   `base-lora`: the base exported uncompressed, then its GGUF's own blocks and the adapter's
   low-rank branches written in (edgereason.export.openvino_base_lora).
4. Verification with the OpenVINO runtime and openvino-genai in this environment, the same figures
   as GGUF (top-1 agreement, KL, perplexity, tokenizer and template round trip, greedy answers).
The IR is written to `.staging/` and moved to `openvino-<weights>/` only once verified; a failed
one goes to `failed/`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from edgereason.backends.chat_template import ChatTemplate
from edgereason.console import make_console
from edgereason.export.answers import training_problems
from edgereason.export.calibration import Calibration, calibration_traces
from edgereason.export.config import OpenVINOExportConfig
from edgereason.export.files import ExportError, require_free_space, sha256_file
from edgereason.export.manifest import Manifest, resolve_source
from edgereason.export.merge import load_hf, merged_checkpoint, parameter_count
from edgereason.export.openvino_base_lora import graft, plan_graft
from edgereason.export.verify import Reference, verify_openvino
from edgereason.formats import get_format


def export_openvino(cfg: OpenVINOExportConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or make_console()
    try:
        import openvino  # noqa: F401
        import openvino_genai  # noqa: F401
    except ImportError as e:
        raise ExportError(f"the OpenVINO runtime is missing ({e.name}): pip install 'edgereason[openvino]'") from None
    from edgereason.openvino_env import OpenVINOEnvError, ensure

    src = resolve_source(cfg.base, cfg.adapter, cfg.format)
    fmt = get_format(src.format_name)
    out_dir = cfg.out
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.open(out_dir)
    same_sources = manifest.data.get("source_key") == src.key  # earlier traces in logs/ are this model's
    folder = f"openvino-{cfg.weights}" + ("" if cfg.ratio == 1.0 else f"-r{int(cfg.ratio * 100)}")
    final, staging, logs = out_dir / folder, out_dir / ".staging" / folder, out_dir / "logs"
    settings = cfg.model_dump(include={"weights", "group_size", "ratio", "awq", "scale_estimation", "lora_correction",
                                       "calibration_problems", "calibration_data", "seq_len"})
    key = f"{src.key}+{json.dumps(settings, sort_keys=True)}"
    if not cfg.force and final.is_dir() and manifest.done("openvino", key):
        console.print(f"[dim]skip {folder}: already exported and verified[/]")
        return manifest.data["artifacts"]["openvino"]
    params = parameter_count(src.base.require_hf())
    require_free_space(out_dir, params * 8, "the merged checkpoint and the OpenVINO IR")
    graft_plan = None
    if cfg.weights == "base-lora":
        assert src.adapter is not None  # the config requires it
        graft_plan = plan_graft(src.base.gguf_path, src.base.require_hf(), src.adapter)
    try:
        python = ensure(lambda m: console.print(f"[dim]{m}[/]"))
    except OpenVINOEnvError as e:
        raise ExportError(str(e)) from None

    # base-lora exports the base itself: the adapter goes in as branches, not merged
    hf_dir = src.base.require_hf() if cfg.weights == "base-lora" else merged_checkpoint(src, manifest, cfg.force, console)[0]
    model, tok = load_hf(src.base, src.adapter)
    manifest.start(src, params, tok.chat_template)
    calib = None
    if cfg.weights == "int4":
        calib = _calibration(cfg, model, tok, fmt, logs, console, reuse=same_sources and not cfg.force)

    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    spec = {"checkpoint": str(hf_dir), "out": str(staging), "calibration": str(calib.file) if calib else None,
            "num_samples": calib.traces if calib else 0, **settings}
    spec_file = logs / f"{folder}.json"
    logs.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    console.print(f"[bold]openvino {cfg.weights}[/] → {folder} (optimum-intel"
                  + (f" + the blocks of {graft_plan.base_gguf.name} and the adapter" if graft_plan else " + NNCF")
                  + (f", AWQ and scale estimation on {calib.traces} traces" if calib else "")
                  + (", LoRA correction" if calib and cfg.lora_correction else "") + ")")
    t0 = time.perf_counter()
    log = logs / f"{folder}.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this edgereason, no install
    with open(log, "w", encoding="utf-8") as fh:
        rc = subprocess.run([str(python), "-P", "-m", "edgereason.export.openvino_worker", str(spec_file)],
                            stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = round(time.perf_counter() - t0, 1)
    if rc != 0 or not (staging / "openvino_model.xml").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        raise ExportError(f"the OpenVINO export failed (exit {rc}); last lines of {log}:\n{tail}")
    info = json.loads((staging / "edgereason-export.json").read_text())
    if graft_plan is not None:
        try:
            info["base_lora"] = graft(staging / "openvino_model.xml", graft_plan)
        except Exception:  # nothing half-written stays behind, whatever failed
            shutil.rmtree(staging, ignore_errors=True)
            raise
        wall = round(time.perf_counter() - t0, 1)

    problems = training_problems(cfg.answer_problems) if cfg.answer_problems else []
    reference = Reference(model, tok, src.format_name, problems)
    ver = verify_openvino(staging, reference, cfg.weights, cfg.threads)
    target = final if ver.passed else out_dir / "failed" / folder
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    entry = manifest.record("openvino", target, "openvino", f"{cfg.weights}" + (f"-ratio{cfg.ratio}" if cfg.ratio < 1 else ""),
                            key, "ok" if ver.passed else "failed", wall_s=wall, verification=ver.to_dict(),
                            settings=settings, worker=info, device="CPU",
                            serve_with=f"edgereason serve --backend openvino --model {target}")
    answers = ver.answers or {}
    colour = "green" if ver.passed else "red"
    console.print(f"  [{colour}]{'verified' if ver.passed else 'verification failed'}[/] top-1 {ver.top1_agreement:.3f}, "
                  f"KL {ver.mean_kl:.4f}, PPL {ver.perplexity:.2f} (ref {ver.reference_perplexity:.2f})"
                  + (f", answers {answers['answer_agreement']:.2f}" if answers else "")
                  + f", {entry['size_bytes'] / 2**20:.1f} MiB, {wall:.0f} s")
    return entry


def _calibration(cfg: OpenVINOExportConfig, model: Any, tok: Any, fmt: Any, logs: Path, console: Console,
                 reuse: bool) -> Calibration:
    """The folder's calibration traces if an export of the same sources made them, else new ones
    sampled from the merged model."""
    from edgereason.backends.transformers import TransformersBackend

    file = logs / "calibration.jsonl"
    if reuse and file.is_file():
        texts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        console.print(f"[dim]calibration: reusing {len(texts)} traces in {file}[/]")
        return Calibration(file, cfg.calibration_problems, len(texts), len(texts), 0.0)
    console.print(f"[bold]calibration[/] the model's own answers to {cfg.calibration_problems} training problems")
    template = ChatTemplate(tok.chat_template, tok.bos_token or "", tok.eos_token or "")
    calib = calibration_traces(TransformersBackend.from_model(model, tok, "merged"), template, fmt, file,
                               cfg.calibration_problems, cfg.calibration_data)
    console.print(f"  {calib.valid_traces}/{calib.traces} traces format-valid ({sha256_file(file)[:12]})")
    return calib
