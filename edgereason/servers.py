"""HTTP servers as processes: a free port, waiting for health, and a managed child that is restarted
when it dies and stopped when its owner exits.

Used for llama-server under `edgereason serve`, for `edgereason serve` itself under the benchmarks
and the tests, and by anything else that starts a server and must know when it answers.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def python_module(module: str, *args: str) -> list[str]:
    """A command running `python -m module`, without the working directory on sys.path (`-P`), so a
    user's own `train.py` or `edgereason/` folder can never stand in for the installed package."""
    safe = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *safe, "-m", module, *args]


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed body) of a GET: the body is None when it is not JSON (a health page may be
    HTML); (0, None) when nothing answers."""
    import json

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            try:
                return r.status, json.loads(body or b"null")
            except ValueError:
                return r.status, None
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


def wait_healthy(base_url: str, timeout_s: float = 120.0, path: str = "/health",
                 process: subprocess.Popen[Any] | None = None) -> dict[str, Any] | None:
    """The server's health body once it answers 200, or None if it never does within the timeout
    (or `process` exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return None
        status, body = get_json(base_url.rstrip("/") + path)
        if status == 200:
            return body if isinstance(body, dict) else {}
        time.sleep(0.2)
    return None


def exit_on_termination(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Make SIGTERM and SIGHUP raise SystemExit(128 + signal) in the main thread, so `finally` blocks
    and atexit run and every ManagedProcess stops its server. Python's default for SIGTERM is to die
    at once without atexit, which left a llama-server child orphaned (on its port, holding its
    memory) after `timeout make run` or a closed terminal. Call it from the main thread; uvicorn
    replaces it with its own graceful handler while it serves."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in signals:
        signal.signal(sig, _exit)


class ManagedProcess:
    """A child server process: started and health-waited, restarted by a watchdog when it dies,
    stopped (process group and all) on `stop()` or at interpreter exit. Its output goes to a log
    file whose last lines are quoted in every error."""

    def __init__(self, cmd: Sequence[str], base_url: str, log_path: Path, *, health_path: str = "/health",
                 startup_timeout_s: float = 120.0, restart: bool = True, env: dict[str, str] | None = None,
                 name: str = "server") -> None:
        self.cmd = list(cmd)
        self.base_url = base_url
        self.log_path = log_path
        self.health_path = health_path
        self.startup_timeout_s = startup_timeout_s
        self.restart_on_exit = restart
        self.env = env
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None
        atexit.register(self.stop)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        finally:
            log.close()
        if wait_healthy(self.base_url, self.startup_timeout_s, self.health_path, self.proc) is None:
            self._kill()
            raise RuntimeError(f"{self.name} did not become healthy within {self.startup_timeout_s:.0f} s "
                               f"({' '.join(self.cmd[:3])} ...); last lines of {self.log_path}:\n{self.log_tail()}")
        self.ready.set()

    def start(self) -> ManagedProcess:
        with self._lock:
            self._spawn()
        if self.restart_on_exit and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            self.ready.clear()  # requests get 503 until it is back
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self.restarts += 1
                    self._spawn()
                except RuntimeError:
                    time.sleep(2.0)  # keep trying; the log says why it will not start

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serving(self) -> bool:
        """Up and answering: started, healthy, and its process still running. The process check makes
        a death visible at once (to /health and to the next request), before the watchdog's next look."""
        return self.ready.is_set() and self.alive()

    def confirm_death(self, wait_s: float = 1.0) -> bool:
        """After a failed call: True (and marked not ready) if the process has exited or exits within
        `wait_s`. A killed server closes its sockets as it exits, so a client can see the broken
        connection a moment before the exit is reaped; a live process is left as it is."""
        proc = self.proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return False
        if self.proc is proc:  # the watchdog has not already replaced it
            self.ready.clear()
        return True

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._stopping.set()
        self.ready.clear()
        with self._lock:
            self._kill()
