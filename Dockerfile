# syntax=docker/dockerfile:1
# edgereason images.
#   Edge (CPU, llama.cpp):  docker build --target edge -t edgereason:edge .
#                           docker run -p 8000:8000 -v "$PWD/exports/x:/models:ro" edgereason:edge
#   Edge, model baked in:   docker build --target edge-baked --build-arg EXPORT_DIR=exports/x -t edgereason:edge-x .
#   Without a registry (podman, a debootstrap base; `make test-docker` does this and runs the images):
#                           docker/base-image.sh && podman build --build-arg PYTHON_IMAGE=localhost/edgereason-python:bookworm ...
#   GPU (vLLM):             docker build --target gpu -t edgereason:gpu .
#                           docker run --gpus all -p 8000:8000 -v "$PWD/exports/x:/models:ro" edgereason:gpu
# The server reads /models/model.gguf (edge) or the HF/INT4 folder /models/int4-nf4 (gpu) by default;
# pass other `edgereason serve` options after the image name.
# Debian packages are not pinned to exact versions: a stable point release removes the old version
# from the mirror (git 1:2.39.5-0+deb12u2 was replaced by +deb12u3 and a pinned build broke), and
# bookworm's updates are security and bug fixes only. The base image and the Python pins fix the rest.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- source: the project files, copied once and shared by the edge and GPU builds --------------
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgereason ./edgereason
COPY docker/install-edge.sh ./docker/install-edge.sh
COPY scripts/install-llama-cpp.sh ./scripts/install-llama-cpp.sh

# ---- build: compile llama.cpp (libraries + llama-server) once, install edgereason into /opt/venv ---
FROM ${PYTHON_IMAGE} AS edge-build
SHELL ["/bin/sh", "-eu", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
COPY --from=source /src /src
WORKDIR /src
# CMAKE_ARGS picks the CPU target of the llama.cpp build (default: portable AVX2).
ARG CMAKE_ARGS=""
# The llama.cpp build cache (keyed by version and flags). `podman build -v ~/.cache/edgereason:/cache`
# lends the host's build of the same tree (Debian 12 both sides), as `make test-docker` does; without
# a mount the tree is compiled here and the cache left out of the image.
ENV EDGEREASON_CACHE_DIR=/cache
RUN CMAKE_ARGS="${CMAKE_ARGS}" sh docker/install-edge.sh /opt/venv /src \
 && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} + \
 && if ! mountpoint -q /cache; then rm -rf /cache; fi

# ---- edge: the small runtime image ----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS edge
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 edge
COPY --from=edge-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGEREASON_CACHE_DIR=/home/edge/.cache/edgereason
USER 10001
WORKDIR /home/edge
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["edgereason", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "/models/model.gguf"]

# ---- edge-baked: the same with an export's Q4_K_M GGUF and manifest inside -------------------------
FROM edge AS edge-baked
ARG EXPORT_DIR=exports/pipeline-smollm2
COPY --chown=edge:edge ${EXPORT_DIR}/model-q4_k_m.gguf ${EXPORT_DIR}/manifest.json /models/
CMD ["--model", "/models/model-q4_k_m.gguf"]

# ---- gpu: vLLM (CUDA) behind the same OpenAI-compatible API ----------------------------------------
FROM vllm/vllm-openai:v0.32.0 AS gpu
COPY --from=source /src /src
WORKDIR /src
# The local project itself, whose dependencies are pinned by the base image's vLLM environment.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]" \
 && useradd --create-home --uid 10001 edge
ENV PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/edge
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["edgereason", "serve", "--host", "0.0.0.0", "--port", "8000", "--backend", "vllm"]
CMD ["--model", "/models/int4-nf4"]
