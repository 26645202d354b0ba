#!/bin/sh
# Install the edge server (llama-server + the reasoning gateway) into a virtual environment.
# Used by the Dockerfile's edge build stage, and by tests/test_docker.py on a fresh venv, so the
# image's install steps are exercised without a Docker engine.
#   docker/install-edge.sh VENV_DIR [SOURCE_DIR]
set -eu
venv="$1"
src="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --upgrade "pip==25.3"
sh "$src/scripts/install-llama-cpp.sh" "$venv/bin/python" "$src"
"$venv/bin/pip" install "$src[llama,serve]"
