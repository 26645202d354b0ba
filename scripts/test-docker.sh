#!/usr/bin/env bash
# Build the Dockerfile's edge images with podman and run them (tests/test_container.py).
# Registry-free: the base image is made locally by docker/base-image.sh (debootstrap). The build
# borrows this machine's package access for its RUN steps only, as mounts that never reach a layer:
# the CA bundle and pip's configuration (/etc/pip.conf), and the host network. The llama.cpp build
# cache of the set-up is lent the same way, so the image's llama.cpp is not compiled twice.
#   scripts/test-docker.sh            (root; podman, runc and debootstrap installed — .ci/run does it)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "[test-docker] run as root: debootstrap and rootful podman need it" >&2; exit 2; }
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || { echo "[test-docker] $tool is not installed (apt-get install podman runc debootstrap)" >&2; exit 2; }
done
# runc, not crun (crun cannot set rlimits here), and limits this machine allows: podman's defaults
# (nofile 1048576, nproc 4194304) are above the hard limits and runc fails with "error setting rlimit".
conf_dir="$PWD/test-output/podman"
mkdir -p "$conf_dir"
nofile=$(ulimit -Hn)
cat > "$conf_dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$conf_dir/containers.conf"

base=localhost/edgereason-python:bookworm
sh docker/base-image.sh "$base"

cache="${EDGEREASON_CACHE_DIR:-$HOME/.cache/edgereason}"
mkdir -p "$cache"
mounts=(-v "$cache:/cache")
for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
  [ -f "$f" ] && mounts+=(-v "$f:$f:ro")
done

# The baked image's export: the embedded default model as the export's chosen GGUF, with its manifest.
export_dir=test-output/container-export
.venv/bin/python scripts/container_export.py "$export_dir"

build() {  # build TARGET TAG [ARGS...]
  local target="$1" tag="$2"; shift 2
  local t0=$SECONDS
  echo "[test-docker] podman build --target $target"
  podman build -q --network host "${mounts[@]}" --build-arg PYTHON_IMAGE="$base" "$@" \
    --target "$target" -t "$tag" . > "$conf_dir/build-$target.log" 2>&1 \
    || { tail -40 "$conf_dir/build-$target.log" >&2; exit 1; }
  echo "[test-docker] $tag built in $((SECONDS - t0)) s"
}
build edge localhost/edgereason:edge
build edge-baked localhost/edgereason:edge-baked --build-arg EXPORT_DIR="$export_dir"

podman image prune -f >/dev/null  # the build stages' untagged layers

EDGEREASON_TEST_IMAGE=localhost/edgereason:edge EDGEREASON_TEST_BAKED_IMAGE=localhost/edgereason:edge-baked \
EDGEREASON_TEST_EXPORT="$export_dir" \
  .venv/bin/python -m pytest -q -rs -s -p no:cacheprovider tests/test_container.py
