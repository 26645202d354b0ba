#!/bin/sh
# A local Debian 12 (bookworm) base image with Python 3.11, for machines that reach Debian's package
# mirror but no image registry (the Dockerfile's default base, python:*-slim-bookworm, is pulled from
# Docker Hub). debootstrap builds the root file system from Debian's packages; podman imports it.
#   docker/base-image.sh [TAG]        (default localhost/edgereason-python:bookworm; root, needs debootstrap)
# The image is made once per machine; pass it to the build as --build-arg PYTHON_IMAGE=TAG.
set -eu
tag="${1:-localhost/edgereason-python:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if podman image exists "$tag"; then
  echo "[base-image] $tag exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "[base-image] debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
work=$(mktemp -d /var/tmp/edgereason-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "[base-image] debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# The security suite, as the official images have it; no package cache or lists in the image.
echo "deb http://deb.debian.org/debian-security bookworm-security main" >> "$work/rootfs/etc/apt/sources.list"
# apt keeps no package cache in a layer, as in Debian's official images (their docker-clean).
cat > "$work/rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
APT
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/cache/apt/*.bin "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | podman import -q --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "[base-image] $tag: $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
