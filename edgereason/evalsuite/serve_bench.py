"""Benchmarks of the HTTP server itself (`edgereason bench --serve`), measured as a client.

- gateway overhead: generation tokens/s through `/v1/completions` vs raw llama-cpp-python with the
  same prompt and settings (greedy, no grammar), one request at a time;
- load: many concurrent clients for a fixed time against `/v1/chat/completions`: status counts
  (429s are the bounded queue doing its job), latency p50/p99, and the server's RSS over time.
The server runs as its own process (`edgereason serve`), exactly as deployed.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from edgereason.servers import free_port, python_module, wait_healthy

PROMPT = ("<|im_start|>user\nWrite a short story about a robot who learns to count, "
          "step by step.<|im_end|>\n<|im_start|>assistant\n")


def _raw_tokens_per_s(model: Path, tokens: int, threads: int, repeats: int) -> float:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=1024, n_threads=threads, verbose=False)
    rates = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        r = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0)
        rates.append(r["usage"]["completion_tokens"] / (time.perf_counter() - t))
    llm.close()
    return statistics.median(rates[1:])


def run_serve_bench(model: Path, threads: int, clients: int = 64, seconds: float = 60.0, tokens: int = 128,
                    repeats: int = 3, max_queue: int = 32) -> dict:
    import psutil

    port = free_port()
    proc = subprocess.Popen(
        python_module("edgereason.cli", "serve", "--model", str(model), "--port", str(port), "--threads", str(threads),
                      "--max-queue", str(max_queue), "--timeout-s", "120"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait_healthy(base)
        if health is None:
            raise RuntimeError("the server did not start")
        name = health["model"]
        served = psutil.Process(proc.pid)

        rates = []
        with httpx.Client(timeout=300) as http:
            for _ in range(repeats + 1):
                t = time.perf_counter()
                r = http.post(f"{base}/v1/completions", json={"model": name, "prompt": PROMPT, "max_tokens": tokens,
                                                              "temperature": 0})
                rates.append(r.json()["usage"]["completion_tokens"] / (time.perf_counter() - t))
        http_rate = statistics.median(rates[1:])

        statuses: Counter[int] = Counter()
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        stop = time.time() + seconds
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=300) as http:
                while time.time() < stop:
                    t = time.perf_counter()
                    try:
                        r = http.post(f"{base}/v1/chat/completions", json={
                            "model": name, "max_tokens": 32,
                            "messages": [{"role": "user", "content": "What is 7 + 5?"}]})
                        code = r.status_code
                    except httpx.HTTPError:
                        code = 0  # a connection error: counted, never hidden
                    with lock:
                        statuses[code] += 1
                        if code == 200:
                            latencies.append(time.perf_counter() - t)
                    if code == 429:
                        time.sleep(0.2)  # a polite client backs off

        workers = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        t0 = time.time()
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            rss.append((round(time.time() - t0, 1), served.memory_info().rss / 2**20))
            time.sleep(1.0)
        for w in workers:
            w.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    raw_rate = _raw_tokens_per_s(model, tokens, threads, repeats)
    lat = sorted(latencies)
    q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
    rss_mb = [m for _, m in rss]
    return {
        "model": str(model), "threads": threads,
        "overhead": {"raw_tok_s": raw_rate, "http_tok_s": http_rate, "http_over_raw": http_rate / raw_rate},
        "load": {"clients": clients, "seconds": seconds, "statuses": {str(k): v for k, v in sorted(statuses.items())},
                 "ok": statuses[200], "errors_other_than_429": sum(v for k, v in statuses.items() if k not in (200, 429)),
                 "p50_s": q(0.5), "p99_s": q(0.99),
                 "rss_mb_start": rss_mb[0] if rss_mb else None, "rss_mb_end": rss_mb[-1] if rss_mb else None,
                 "rss_mb_peak": max(rss_mb) if rss_mb else None, "rss_series": rss},
    }


def serve_bench_markdown(r: dict) -> list[str]:
    o, load = r["overhead"], r["load"]
    return [
        "", "## Server", "",
        f"Gateway overhead ({r['threads']} threads, greedy, 128 tokens): raw llama-cpp-python {o['raw_tok_s']:.1f} tok/s, "
        f"through HTTP {o['http_tok_s']:.1f} tok/s = **{100 * o['http_over_raw']:.1f}%**.", "",
        f"Load: {load['clients']} concurrent clients for {load['seconds']:.0f} s: statuses {load['statuses']} "
        f"(errors other than 429: {load['errors_other_than_429']}), latency p50 {load['p50_s']:.2f} s / p99 {load['p99_s']:.2f} s, "
        f"server RSS {load['rss_mb_start']:.0f} → {load['rss_mb_end']:.0f} MB (peak {load['rss_mb_peak']:.0f} MB).",
    ]
