"""A dying engine, without a model: a managed child process whose death is visible at once, and an
OpenAI-compatible client whose broken connections and cut streams come back as engine errors (which
the server maps to 502/503), never as a library's raw exception (a 500)."""

import asyncio
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgereason.backends.base import BackendError, SamplingParams
from edgereason.backends.openai_client import OpenAIBackend
from edgereason.servers import ManagedProcess, free_port


def test_a_killed_child_is_not_serving_before_any_watchdog_looks(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    proc = ManagedProcess(cmd, f"http://127.0.0.1:{port}", tmp_path / "log", health_path="/", restart=False,
                          startup_timeout_s=30).start()
    try:
        assert proc.serving()
        assert proc.confirm_death(wait_s=0.01) is False  # alive: left as it is
        assert proc.ready.is_set()
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.confirm_death(wait_s=10) is True
        assert not proc.ready.is_set() and not proc.serving()
    finally:
        proc.stop()


class _CutStream(BaseHTTPRequestHandler):
    """Answers a streamed completion with one good event and half of the next, then drops the
    connection: what a client sees when the engine is killed mid-answer."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"index": 0, "text": "12"}]}\n\n')
        self.wfile.write(b'data: {"choices": [{"index": 0, "te\n\n')
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cut_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _CutStream)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_stream_cut_mid_event_is_an_engine_error(cut_server):
    backend = OpenAIBackend(cut_server, "m", timeout_s=10)

    async def consume_stream() -> None:
        async for _ in backend.astream("p", SamplingParams(max_tokens=8)):
            pass

    async def consume_samples() -> None:
        async for _ in backend.asamples("p", SamplingParams(max_tokens=8), 2):
            pass

    for consume in (consume_stream, consume_samples):
        with pytest.raises(BackendError):
            asyncio.run(consume())


def test_an_engine_that_is_gone_is_an_engine_error_everywhere():
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}", "m", timeout_s=5)
    with pytest.raises(BackendError):
        backend.count_tokens("some text")  # a ConnectError here was a 500 (issue #29)
    with pytest.raises(BackendError):
        asyncio.run(backend.acomplete("p", SamplingParams(max_tokens=4)))


def test_gpu_layers_are_checked_and_a_cpu_build_says_it_cannot_offload():
    from edgereason.gpu_layers import n_gpu_layers, offload_report, parse_gpu_layers
    from edgereason.serve.config import ServeConfig

    assert [parse_gpu_layers(v) for v in ("auto", "ALL", 12, None)] == ["auto", "all", "12", "auto"]
    with pytest.raises(ValueError, match="gpu_layers 'half'"):
        parse_gpu_layers("half")
    with pytest.raises(ValueError, match="gpu_layers"):
        ServeConfig(llama_cpp={"gpu_layers": "-3"})
    assert n_gpu_layers("all") == -1 and n_gpu_layers("7") == 7
    report = offload_report("all")
    if not report["build_supports_gpu"]:  # the set-up's CPU build: asked for layers, told why not
        assert n_gpu_layers("auto") == 0 and not report["on_gpu"] and "-DGGML_CUDA=on" in report["note"]


_TERMINATED_OWNER = """
import sys, time
from pathlib import Path
from edgereason.servers import ManagedProcess, exit_on_termination
exit_on_termination()
port, folder = sys.argv[1], sys.argv[2]
child = ManagedProcess([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1", "--directory", folder],
                       f"http://127.0.0.1:{port}", Path(folder) / "log", health_path="/", restart=False,
                       startup_timeout_s=30).start()
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_terminated_owner_stops_its_server_instead_of_orphaning_it(tmp_path):
    import subprocess

    owner = subprocess.Popen([sys.executable, "-c", _TERMINATED_OWNER, str(free_port()), str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        child_pid = int(owner.stdout.readline())  # printed once the child answers its health check
        os.kill(child_pid, 0)  # running
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(timeout=30) == 128 + signal.SIGTERM  # SystemExit, so atexit ran
        with pytest.raises(ProcessLookupError):  # the child was stopped (and reaped) by its owner
            os.kill(child_pid, 0)
    finally:
        owner.kill()
        owner.wait(timeout=10)
