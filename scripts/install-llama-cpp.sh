#!/bin/sh
# llama.cpp into a Python environment, compiled once: one CMake build of the tree that the pinned
# llama-cpp-python release vendors (cached under ~/.cache/edgereason, keyed by version and flags)
# gives the shared libraries and llama-server, llama-imatrix, llama-quantize, llama-bench,
# llama-batched-bench. The bindings are installed without their own build (LLAMA_BUILD=OFF, not
# cached by pip, so no library-less wheel reaches another environment) and the built libraries and
# tools are copied into their llama_cpp/lib folder.
#   scripts/install-llama-cpp.sh PYTHON [SOURCE_DIR]
set -eu
py="$1"
src="${2:-.}"
ver=$(cd "$src" && "$py" -c 'from edgereason.native import LLAMA_CPP_PYTHON_VERSION as v; print(v)')
(cd "$src" && "$py" -m edgereason.native build)
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" "$py" -m pip install --no-cache-dir "llama-cpp-python==$ver"
(cd "$src" && "$py" -m edgereason.native install)
