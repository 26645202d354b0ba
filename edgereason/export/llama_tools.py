"""llama.cpp's own tools, driven from Python: the HF→GGUF and LoRA→GGUF converters, the quantizer and
the importance-matrix tool.

All come from the llama.cpp tree that the pinned llama-cpp-python release vendors
(`edgereason.native`): the converter scripts run from its source, `llama-quantize` and
`llama-imatrix` from its one CMake build, so converter, quantizer and runtime are the same version.
Tools run as subprocesses: a crash in them cannot take the CLI down, and their verbose logs go to a
file in the export folder.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from edgereason.cpu import default_threads
from edgereason.export.files import ExportError, atomic_output
from edgereason.native import NativeError, converter_env, run_logged, source_dir, tool
from edgereason.native import convert_hf_to_gguf as native_convert

# Names accepted by --quant, lower case, mapped to llama-quantize's type names. IQ types need an
# importance matrix (llama.cpp refuses to make most of them without one).
QUANT_TYPES: dict[str, str] = {
    "q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q5_k_s": "Q5_K_S", "q5_0": "Q5_0",
    "q4_k_m": "Q4_K_M", "q4_k_s": "Q4_K_S", "q4_0": "Q4_0", "iq4_xs": "IQ4_XS", "iq4_nl": "IQ4_NL",
    "q3_k_m": "Q3_K_M", "q3_k_s": "Q3_K_S", "iq3_m": "IQ3_M", "iq3_xxs": "IQ3_XXS", "q2_k": "Q2_K",
    "iq2_m": "IQ2_M",
}
NEEDS_IMATRIX = frozenset({"iq4_xs", "iq3_m", "iq3_xxs", "iq2_m"})


def converter_dir() -> Path:
    """The llama.cpp tree holding convert_hf_to_gguf.py, convert_lora_to_gguf.py and gguf-py."""
    try:
        return source_dir()
    except NativeError as e:
        raise ExportError(str(e)) from None


def native_tool(name: str) -> Path:
    try:
        return tool(name)
    except NativeError as e:
        raise ExportError(str(e)) from None


def run_tool(cmd: Sequence[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    try:
        run_logged(list(cmd), log, what, env)
    except NativeError as e:
        raise ExportError(str(e)) from None


def convert_hf_to_gguf(hf_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """HF checkpoint → GGUF (f16/bf16/f32/q8_0) with llama.cpp's converter, written atomically."""
    with atomic_output(out) as tmp:
        try:
            native_convert(hf_dir, tmp, log, outtype)
        except NativeError as e:
            raise ExportError(str(e)) from None


def convert_lora_to_gguf(adapter_dir: Path, base_hf_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """A PEFT LoRA adapter → GGUF LoRA (for llama.cpp's --lora / lora_path), written atomically."""
    tools = converter_dir()
    with atomic_output(out) as tmp:
        run_tool([sys.executable, str(tools / "convert_lora_to_gguf.py"), str(adapter_dir), "--base", str(base_hf_dir),
                  "--outtype", outtype, "--outfile", str(tmp)], log, f"convert_lora_to_gguf.py on {adapter_dir}",
                 converter_env())


def quantize_gguf(src: Path, out: Path, quant: str, log: Path, threads: int | None = None,
                  imatrix: Path | None = None, tensor_types: dict[str, str] | None = None) -> None:
    """Quantize a GGUF with llama.cpp's `llama-quantize`, written atomically.

    `imatrix` weights the rounding by each channel's importance; `tensor_types` maps a tensor name
    pattern (e.g. "token_embd" or "output") to the type it keeps (per-tensor overrides)."""
    key = quant.lower()
    if key not in QUANT_TYPES:
        raise ExportError(f"unknown quant type {quant!r}; choose from {', '.join(QUANT_TYPES)}")
    if key in NEEDS_IMATRIX and imatrix is None:
        raise ExportError(f"{key} needs an importance matrix: export with --imatrix (the default below q8_0)")
    cmd = [str(native_tool("llama-quantize"))]
    if imatrix is not None:
        cmd += ["--imatrix", str(imatrix)]
    for pattern, qtype in (tensor_types or {}).items():
        if pattern == "token_embd":
            cmd += ["--token-embedding-type", qtype.upper()]
        elif pattern == "output":
            cmd += ["--output-tensor-type", qtype.upper()]
        else:
            cmd += ["--tensor-type", f"{pattern}={qtype.lower()}"]
    with atomic_output(out) as tmp:
        run_tool([*cmd, str(src), str(tmp), QUANT_TYPES[key], str(default_threads(threads))], log,
                 f"llama-quantize to {QUANT_TYPES[key]}")


def set_chat_template(src: Path, out: Path, template_file: Path, log: Path) -> None:
    """A copy of a GGUF with another chat template, by gguf-py's own `gguf_new_metadata.py` (every
    tensor and every other key copied as they are), written atomically."""
    script = converter_dir() / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    with atomic_output(out) as tmp:
        run_tool([sys.executable, str(script), str(src), str(tmp), "--chat-template-file", str(template_file), "--force"],
                 log, f"gguf_new_metadata.py on {src.name}", converter_env())
