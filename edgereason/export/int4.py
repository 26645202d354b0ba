"""`edgereason export int4`: a 4-bit checkpoint for GPU serving.

Route: bitsandbytes NF4 (double-quantised, 64-weight blocks) saved as a pre-quantized HF
checkpoint. We chose it after checking the alternatives here: it installs from PyPI without
pinning other packages, quantises on CPU (so it is produced and verified on any machine), reloads
with transformers, and vLLM serves pre-quantized bitsandbytes checkpoints
(`vllm serve DIR --quantization bitsandbytes`). llm-compressor (compressed-tensors W4A16) pins an
older transformers than the trainer uses, and GPTQ/AWQ need a GPU to quantise.
The vLLM load is checked only where a GPU and vLLM are present.
"""

from __future__ import annotations

import shutil
import time

from rich.console import Console

from edgereason.console import make_console
from edgereason.export.answers import training_problems
from edgereason.export.config import Int4ExportConfig
from edgereason.export.files import ExportError, atomic_output, require_free_space
from edgereason.export.manifest import Manifest, resolve_source
from edgereason.export.merge import load_hf, parameter_count
from edgereason.export.verify import Reference, verify_hf

INT4_DIR = "int4-nf4"


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def export_int4(cfg: Int4ExportConfig, console: Console | None = None) -> dict:
    console = console or make_console()
    out_dir, force = cfg.out, cfg.force
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    except ImportError as e:
        raise ExportError(f"INT4 export needs bitsandbytes: pip install 'edgereason[export]' ({e.name} missing)") from None
    src = resolve_source(cfg.base, cfg.adapter, cfg.format)
    manifest = Manifest.open(out_dir)
    final = out_dir / INT4_DIR
    key = f"{src.key}+nf4+dq:{cfg.double_quant}+{cfg.compute_dtype}"
    if not force and final.is_dir() and manifest.done("int4", key):
        console.print(f"[dim]skip {INT4_DIR}: already exported and verified[/]")
        return manifest.data["artifacts"]["int4"]
    params = parameter_count(src.base.require_hf())
    require_free_space(out_dir, params * 6, "the merged checkpoint and its INT4 copy")
    model, tok = load_hf(src.base, src.adapter)
    manifest.start(src, params, tok.chat_template)
    reference = Reference(model, tok, src.format_name,
                          training_problems(cfg.answer_problems) if cfg.answer_problems else None)
    t0 = time.perf_counter()
    staging = out_dir / ".staging-int4"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        console.print(f"[bold]int4 nf4[/] → {INT4_DIR}")
        model.save_pretrained(staging / "merged")
        tok.save_pretrained(staging / "merged")
        del model
        qconfig = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, _DTYPES[cfg.compute_dtype]),
        )
        qmodel = AutoModelForCausalLM.from_pretrained(
            str(staging / "merged"), quantization_config=qconfig, device_map="cuda" if torch.cuda.is_available() else "cpu",
        )
        ver = verify_hf(qmodel, reference, "int4")
        wall = round(time.perf_counter() - t0, 2)
        target = final if ver.passed else out_dir / "failed" / INT4_DIR
        with atomic_output(target) as tmp:
            qmodel.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry = manifest.record("int4", target, "int4", "bnb-nf4", key, "ok" if ver.passed else "failed",
                            wall_s=wall, verification=ver.to_dict(), double_quant=cfg.double_quant,
                            compute_dtype=cfg.compute_dtype,
                            serve_with="vllm serve {dir} --quantization bitsandbytes")
    colour = "green" if ver.passed else "red"
    console.print(f"  [{colour}]{'verified' if ver.passed else 'verification failed'}[/] top-1 {ver.top1_agreement:.3f}, "
                  f"PPL {ver.perplexity:.2f} (ref {ver.reference_perplexity:.2f}), KL {ver.mean_kl:.4f}")
    return entry
