"""The Dockerfile's edge images, built by podman and run for real (`make test-docker`, which
scripts/test-docker.sh drives: a debootstrap base image, runc, the build's package access lent as
mounts). Each image must start, report healthy, and answer a voted chat completion in format; its
size and cold start (container start to a ready /health) are printed and written to
test-output/container-report.json. Skipped unless the images were built (EDGEREASON_TEST_IMAGE)."""

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from edgereason.servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("EDGEREASON_TEST_IMAGE")
BAKED = os.environ.get("EDGEREASON_TEST_BAKED_IMAGE")
EXPORT = os.environ.get("EDGEREASON_TEST_EXPORT")
REPORT = ROOT / "test-output" / "container-report.json"

pytestmark = pytest.mark.skipif(not IMAGE, reason="make test-docker builds the images and runs these tests")


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def _image_mb(image: str) -> float:
    out = _podman("image", "inspect", "--format", "{{.Size}}", image)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip()) / 1e6


def _record(name: str, figures: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    report[name] = figures
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n[container] {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def _run_and_ask(image: str, *run_args: str, serve_args: tuple[str, ...] = ()) -> dict:
    """Start the image (its port published on 127.0.0.1), wait for a ready /health, ask one voted question."""
    port = free_port()
    name = f"edgereason-test-{port}"
    t0 = time.monotonic()
    started = _podman("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8000", *run_args, image, *serve_args)
    assert started.returncode == 0, started.stderr
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}", timeout_s=180)
        cold_start_s = time.monotonic() - t0
        if health is None or not health.get("ready"):
            logs = _podman("logs", name).stdout + _podman("logs", name).stderr
            pytest.fail(f"{image} never became healthy within 180 s; its log:\n{logs[-3000:]}")
        assert health["backend"] == "llama-server"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
            "model": health["model"], "max_tokens": 300, "seed": 7,
            "messages": [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}],
            "voting": {"k": 3, "temperature": 0.2, "early_stop": False}})
        assert r.status_code == 200, r.text
        body = r.json()
        vote, choice = body["voting"], body["choices"][0]
        assert vote["samples"] == 3 and sum(g["count"] for g in vote["votes"]) + vote["invalid"] == 3
        assert choice["format_valid"] is True and choice["message"]["content"].strip()
        assert "reasoning_content" in choice["message"]
        # the image runs as its unprivileged user
        user = _podman("exec", name, "id", "-u")
        assert user.stdout.strip() == "10001", user.stdout + user.stderr
        return {"image_mb": round(_image_mb(image)), "cold_start_s": round(cold_start_s, 1), "model": health["model"]}
    finally:
        _podman("rm", "-f", "-t", "5", name, timeout=60)


def test_the_edge_image_serves_a_mounted_export():
    assert IMAGE and EXPORT, "EDGEREASON_TEST_IMAGE and EDGEREASON_TEST_EXPORT name the image and the export to mount"
    gguf = Path(EXPORT).resolve() / "model-q4_k_m.gguf"
    figures = _run_and_ask(IMAGE, "-v", f"{gguf.parent}:/models:ro", serve_args=("--model", "/models/model-q4_k_m.gguf"))
    _record("edge", figures)


@pytest.mark.skipif(not BAKED, reason="the edge-baked image was not built")
def test_the_baked_image_serves_its_own_export():
    assert BAKED and EXPORT
    figures = _run_and_ask(BAKED)  # nothing mounted: the model and its manifest are in the image
    assert figures["model"] == json.loads((Path(EXPORT) / "manifest.json").read_text())["name"]
    _record("edge-baked", figures)
