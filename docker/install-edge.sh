#!/bin/sh
# Install the edge server (llama.cpp backend + HTTP API) into a virtual environment.
# Used by the Dockerfile's edge build stage, and by tests/test_docker.py on a fresh venv, so the
# image's install steps are exercised without a Docker engine.
#   docker/install-edge.sh VENV_DIR [SOURCE_DIR]
set -eu
venv="$1"
src="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --upgrade "pip==25.3"
# Portable x86-64 build (AVX2/FMA/F16C) unless the caller sets CMAKE_ARGS for its own target.
if [ "$(uname -m)" = "x86_64" ] && [ -z "${CMAKE_ARGS:-}" ]; then
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
fi
"$venv/bin/pip" install "llama-cpp-python==0.3.36"
"$venv/bin/pip" install "$src[llama,serve]"
