"""The OpenVINO export's own virtual environment.

optimum-intel (the exporter) and NNCF (the weight compression) pin `transformers<5.6`; the training
environment runs a newer transformers. So the export runs in a venv of
its own, made once per machine under the edgereason cache (or `EDGEREASON_OPENVINO_VENV`), with the
CPU torch build installed first so pip never pulls a multi-GB CUDA build, and versions pinned to the
set measured together. The runtime half (openvino, openvino-genai, openvino-tokenizers) has no
such pins: the `openvino` serve backend and verification run in the main environment.

    python -m edgereason.openvino_env        # make it now (set-up); `status` reports it
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgereason.native import cache_root

#: The export toolchain, pinned to what was measured together (the OpenVINO runtime of the main
#: environment must be the same release: `openvino-genai==2026.4.1.0` in pyproject's [openvino]).
REQUIREMENTS = (
    "optimum-intel[openvino,nncf]==2.2.0", "optimum==2.3.0", "nncf==3.4.0", "openvino==2026.4.1",
    "openvino-tokenizers==2026.4.1.0", "transformers==5.5.4", "huggingface-hub>=1.5,<1.22", "datasets>=3,<5",
    "accelerate>=1.0", "safetensors>=0.4",
)
#: optimum-intel requires torchvision, but the only torchvision wheel reachable here is a CUDA build
#: whose kernels do not load against the CPU torch ("operator torchvision::nms does not exist"), and
#: transformers then fails to import PreTrainedModel. Text export never uses it: it is removed.
UNWANTED = ("torchvision",)
TORCH = "torch==2.13.0"  # the CPU build on machines without an NVIDIA GPU (as in scripts/setup-venv.sh)


class OpenVINOEnvError(RuntimeError):
    """The OpenVINO export environment could not be made or used; the message says why."""


def venv_dir() -> Path:
    explicit = os.environ.get("EDGEREASON_OPENVINO_VENV")
    if explicit:
        return Path(explicit).expanduser()
    key = hashlib.sha256("\n".join((TORCH, *REQUIREMENTS, *UNWANTED)).encode()).hexdigest()[:10]
    return cache_root() / f"venv-openvino-{key}"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def ready() -> bool:
    return (venv_dir() / ".edgereason-ready").is_file()


def ensure(log: Callable[[str], object] = print) -> Path:
    """The venv's python, making the venv first if needed (a few minutes, once per machine)."""
    if ready():
        return python()
    root = venv_dir()
    log(f"making the OpenVINO export environment in {root} (once per machine; a few minutes)")
    shutil.rmtree(root, ignore_errors=True)
    base = shutil.which("python3.11") or sys.executable
    steps = [[base, "-m", "venv", str(root)], [str(python()), "-m", "pip", "install", "-q", "--upgrade", "pip"]]
    if shutil.which("nvidia-smi") is None:
        steps.append([str(python()), "-m", "pip", "install", "-q", TORCH])
    steps.append([str(python()), "-m", "pip", "install", "-q", TORCH, *REQUIREMENTS])
    steps.append([str(python()), "-m", "pip", "uninstall", "-y", "-q", *UNWANTED])
    for cmd in steps:
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            tail = "\n".join((run.stdout + run.stderr).splitlines()[-12:])
            raise OpenVINOEnvError(f"making the OpenVINO environment failed at `{' '.join(cmd[:6])} ...`:\n{tail}")
    # import what the worker imports: optimum's lazy modules hide a broken install until first use
    check = subprocess.run([str(python()), "-c", "import torch, nncf; from transformers import PreTrainedModel; "
                            "from optimum.exporters.openvino.convert import export_tokenizer; "
                            "from optimum.intel import OVModelForCausalLM, OVQuantizer; "
                            "assert not torch.version.cuda or torch.cuda.is_available(), 'a CUDA torch on a CPU machine'"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise OpenVINOEnvError(f"the OpenVINO environment does not import: {check.stderr.strip()[-600:]}")
    (root / ".edgereason-ready").write_text("\n".join(REQUIREMENTS) + "\n")
    return python()


def main(argv: list[str]) -> int:
    if argv[:1] == ["status"]:
        print(f"{venv_dir()}: {'ready' if ready() else 'not made yet'}")
        return 0
    try:
        print(ensure())
    except OpenVINOEnvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
