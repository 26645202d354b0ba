"""llama.cpp's own tools, driven from Python: the HF→GGUF and LoRA→GGUF converters and the quantizer.

The converter scripts are not installed by `llama-cpp-python`, but its source distribution vendors
the matching llama.cpp tree. We take `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, their
`conversion/` package and `gguf-py/` from the sdist of the *installed* llama-cpp-python version, so
the converter writes exactly what the runtime reads. Set EDGEREASON_LLAMA_CPP_DIR to use a llama.cpp
checkout instead. Tools run as subprocesses: a crash in them cannot take the CLI down, and their
verbose logs go to a file in the export folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgereason.paths import cache_dir
from export.files import ExportError, atomic_output

# Names accepted by --quant, lower case, mapped to llama.cpp's LLAMA_FTYPE_MOSTLY_* constants.
QUANT_TYPES: dict[str, str] = {
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M",
    "q5_k_s": "Q5_K_S",
    "q5_0": "Q5_0",
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q4_0": "Q4_0",
    "q3_k_m": "Q3_K_M",
    "q2_k": "Q2_K",
}
_VENDORED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def converter_dir(fetch: bool = True) -> Path:
    """The directory holding llama.cpp's converter scripts and gguf-py (fetched once if needed)."""
    env = os.environ.get("EDGEREASON_LLAMA_CPP_DIR")
    if env:
        path = Path(env).expanduser()
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise ExportError(f"EDGEREASON_LLAMA_CPP_DIR={path} holds no convert_hf_to_gguf.py")
        return path
    ver = llama_cpp_version()
    path = cache_dir() / f"llama.cpp-{ver}"
    if (path / "convert_hf_to_gguf.py").is_file():
        return path
    if not fetch:
        raise ExportError(f"llama.cpp converter for llama-cpp-python {ver} not fetched yet")
    _fetch_converter(ver, path)
    return path


def _fetch_converter(ver: str, dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={ver}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise ExportError(
                f"cannot fetch llama.cpp's converter (the llama-cpp-python=={ver} source distribution from "
                f"PyPI): {proc.stderr.strip()[-400:] or 'no sdist downloaded'}. Offline, point "
                "EDGEREASON_LLAMA_CPP_DIR at a llama.cpp checkout."
            )
        with tarfile.open(sdists[0]) as tar, atomic_output(dest) as out:
            out.mkdir()
            for member in tar.getmembers():
                _, _, rel = member.name.partition("/vendor/llama.cpp/")
                if rel and rel.startswith(_VENDORED) and (member.isfile() or member.isdir()):
                    member.name = rel
                    tar.extract(member, out, filter="data")


def _run_tool(cmd: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
        raise ExportError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def _converter_env(tools: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tools / "gguf-py"), str(tools), env.get("PYTHONPATH", "")])
    env.setdefault("NO_LOCAL_GGUF", "")
    return env


def convert_hf_to_gguf(hf_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """HF checkpoint → GGUF (f16/bf16/f32/q8_0) with llama.cpp's converter, written atomically."""
    tools = converter_dir()
    with atomic_output(out) as tmp:
        _run_tool(
            [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
             "--outfile", str(tmp)],
            log, f"convert_hf_to_gguf.py on {hf_dir}", _converter_env(tools),
        )


def convert_lora_to_gguf(adapter_dir: Path, base_hf_dir: Path, out: Path, log: Path, outtype: str = "f16") -> None:
    """A PEFT LoRA adapter → GGUF LoRA (for llama.cpp's --lora / lora_path), written atomically."""
    tools = converter_dir()
    with atomic_output(out) as tmp:
        _run_tool(
            [sys.executable, str(tools / "convert_lora_to_gguf.py"), str(adapter_dir), "--base", str(base_hf_dir),
             "--outtype", outtype, "--outfile", str(tmp)],
            log, f"convert_lora_to_gguf.py on {adapter_dir}", _converter_env(tools),
        )


def quantize_gguf(src: Path, out: Path, quant: str, log: Path, threads: int | None = None) -> None:
    """Quantize a GGUF with llama.cpp's quantizer (llama_model_quantize), written atomically."""
    key = quant.lower()
    if key not in QUANT_TYPES:
        raise ExportError(f"unknown quant type {quant!r}; choose from {', '.join(QUANT_TYPES)}")
    with atomic_output(out) as tmp:
        _run_tool(
            [sys.executable, "-m", "export._quantize_worker", str(src), str(tmp), QUANT_TYPES[key],
             str(threads or os.cpu_count() or 1)],
            log, f"llama.cpp quantization to {QUANT_TYPES[key]}",
        )
