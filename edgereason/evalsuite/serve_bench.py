"""Benchmarks of the server itself (`edgereason bench --serve`), measured as a client, each against an
anchor measured in the same run:

- **throughput**: aggregate completion tokens/s at 1, 4, 8 and 16 concurrent clients through
  `edgereason serve` (the gateway in front of its managed llama-server), against raw `llama-server`
  on the same GGUF with the same slots and threads, driven by the same load generator;
- **maj@k**: the wall time of k samples of one prompt through the gateway (one n=k request), as a
  multiple of one sample, beside the limit of this CPU: llama.cpp's own `llama-batched-bench` on the
  same file (k sequences sharing one prompt) against one sequence, run just before in each round;
- **TTFT**: time to the first streamed token through the gateway against raw llama-server;
- **load**: many clients for a fixed time: status counts (429s are the bounded queue doing its job),
  answers per minute, latency p50/p99, and the RSS of the gateway and its llama-server over time.
Raw llama-server and the gateway are up together, but only one is driven at a time (never two loads
on the same cores); throughput alternates between them in rounds, and every ratio is a median of rounds.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from edgereason.servers import free_port, python_module, wait_healthy

PROMPT = "<|im_start|>user\nWrite a short story about a robot who learns to count.<|im_end|>\n<|im_start|>assistant\n"


def _drive(base: str, clients: int, requests_each: int, tokens: int, model: str,
           extra: dict[str, Any] | None = None) -> dict[str, float]:
    """`clients` threads, each sending `requests_each` completions of `tokens` tokens (EOS ignored, so
    every request does the same work); aggregate completion tokens/s over the wall time. `extra`
    joins every request body."""
    def client(c: int) -> int:
        done = 0
        with httpx.Client(timeout=600) as http:
            for r in range(requests_each):
                body = {"model": model, "prompt": PROMPT + f"Story {c}.{r}:", "max_tokens": tokens, "ignore_eos": True,
                        "temperature": 0.8, "seed": c * 100 + r, **(extra or {})}
                resp = http.post(f"{base}/v1/completions", json=body)
                resp.raise_for_status()
                done += resp.json()["usage"]["completion_tokens"]
        return done

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "tokens": total, "seconds": wall, "tok_s": total / wall}


def _ttft(base: str, model: str, repeats: int = 5) -> float:
    times = []
    with httpx.Client(timeout=120) as http:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with http.stream("POST", f"{base}/v1/completions", json={"model": model, "prompt": PROMPT + f"Story {i}:",
                                                                     "max_tokens": 8, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data:") and '"text"' in line:
                        times.append(time.perf_counter() - t0)
                        break
    return statistics.median(times[1:])


def _rss_mb(pid: int) -> float:
    """RSS of a process and its children (the gateway and its llama-server)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def _batched_bench_once(model: Path, threads: int, ks: list[int], tokens: int, prompt_tokens: int,
                        adapter: Path | None = None) -> dict[str, float]:
    """llama.cpp's own batched decode on this file: wall time of k sequences sharing one prompt,
    as a multiple of one sequence (the best any server can do here), from one run."""
    from edgereason.native import tool

    npl = ",".join(str(k) for k in sorted({1, *ks}))
    out = subprocess.run([str(tool("llama-batched-bench")), "-m", str(model),
                          "-c", str(max(ks) * (tokens + prompt_tokens) + 512), "-b", "2048", "-ub", "512",
                          "-npp", str(prompt_tokens), "-ntg", str(tokens), "-npl", npl, "-pps",
                          "-t", str(threads), "-tb", str(threads), *(["--lora", str(adapter)] if adapter else [])],
                         capture_output=True, text=True, timeout=1200)
    times: dict[int, float] = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and re.fullmatch(r"\d+", cells[0] or ""):
            times[int(cells[2])] = float(cells[8])  # B, T s (prompt + generation)
    if 1 not in times:
        raise RuntimeError(f"llama-batched-bench gave no result: {out.stderr[-300:]}")
    return {str(k): times[k] / times[1] for k in ks if k in times}


def _maj_round(http: httpx.Client, base: str, model: str, ks: list[int], tokens: int, seed: int) -> dict[str, dict[str, float]]:
    """Wall time of k samples of one prompt as one n=k request through the gateway, and of one sample,
    measured back to back."""
    out: dict[str, dict[str, float]] = {}
    for k in [1, *ks]:
        body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "n": k, "ignore_eos": True,
                "temperature": 0.7, "seed": seed}
        http.post(f"{base}/v1/completions", json={**body, "n": 1, "max_tokens": 4})  # warm the prompt cache alike
        t0 = time.perf_counter()
        r = http.post(f"{base}/v1/completions", json=body)
        r.raise_for_status()
        out[str(k)] = {"seconds": time.perf_counter() - t0, "tokens": r.json()["usage"]["completion_tokens"]}
    return out


def _maj_costs(base: str, model: str, gguf: Path, threads: int, ks: list[int], tokens: int, repeats: int = 3,
               adapter: Path | None = None) -> dict[str, dict[str, Any]]:
    """maj@k through the gateway against the CPU's limit, in rounds: each round runs llama-batched-bench
    once and then the gateway's k samples and one sample, so the two ratios of a round see the same
    machine speed (a single run's ratio moves by up to 20% on a shared 2-core machine). Per k: the
    medians over rounds of the gateway's ratio (× one sample), the limit's, and their quotient
    (× the limit, paired by round)."""
    limits: list[dict[str, float]] = []
    rounds: list[dict[str, dict[str, float]]] = []
    with httpx.Client(timeout=1200) as http:
        for rep in range(repeats):
            limits.append(_batched_bench_once(gguf, threads, ks, tokens, 60, adapter))
            rounds.append(_maj_round(http, base, model, ks, tokens, seed=1 + rep))
    result: dict[str, dict[str, Any]] = {}
    for k in ks:
        x = [r[str(k)]["seconds"] / r["1"]["seconds"] for r in rounds]
        lim = [li.get(str(k)) for li in limits]
        paired = [a / b for a, b in zip(x, lim) if b]
        result[str(k)] = {"seconds": statistics.median(r[str(k)]["seconds"] for r in rounds),
                          "tokens": rounds[-1][str(k)]["tokens"], "x_single": statistics.median(x),
                          "x_single_runs": [round(v, 3) for v in x],
                          "raw_limit_x": statistics.median(b for b in lim if b) if any(lim) else None,
                          "raw_limit_runs": [round(b, 3) if b else None for b in lim],
                          "x_limit": statistics.median(paired) if paired else None,
                          "x_limit_runs": [round(v, 3) for v in paired]}
    return result


def _load(base: str, model: str, clients: int, seconds: float, pid: int) -> dict[str, Any]:
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
                        "model": model, "max_tokens": 32, "messages": [{"role": "user", "content": "What is 7 + 5?"}]})
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
        rss.append((round(time.time() - t0, 1), _rss_mb(pid)))
        time.sleep(1.0)
    lat = sorted(latencies)

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    rss_mb = [m for _, m in rss]
    return {"clients": clients, "seconds": seconds, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "ok": statuses[200], "answers_per_min": statuses[200] * 60 / seconds,
            "errors_other_than_429": sum(v for k, v in statuses.items() if k not in (200, 429)),
            "p50_s": q(0.5), "p99_s": q(0.99), "rss_mb_start": rss_mb[0] if rss_mb else None,
            "rss_mb_end": rss_mb[-1] if rss_mb else None, "rss_mb_peak": max(rss_mb) if rss_mb else None,
            "rss_series": rss}


def run_serve_bench(model: Path, threads: int, slots: int = 8, clients: tuple[int, ...] = (1, 4, 8, 16), tokens: int = 128,
                    requests_each: int = 2, vote_ks: tuple[int, ...] = (8, 16), load_clients: int = 64,
                    load_seconds: float = 60.0, max_queue: int = 32, repeats: int = 3,
                    adapter: Path | None = None) -> dict[str, Any]:
    from edgereason.backends.llama_server import PLAIN_SAMPLING, LlamaServerBackend

    vote_ks = tuple(k for k in vote_ks if k <= slots)  # llama-server caps a request's n at its slots

    result: dict[str, Any] = {"model": str(model), "adapter": str(adapter) if adapter else None,
                              "threads": threads, "slots": slots, "tokens": tokens,
                              "repeats": repeats}
    # The anchor, raw llama-server (same file, slots and threads; managed here only to start and stop it),
    # and `edgereason serve` as deployed (its own process and llama-server) run side by side: throughput
    # is measured in rounds that alternate between them, so a drift in this machine's speed hits both.
    raw = LlamaServerBackend(str(model), adapter=adapter, slots=slots, threads=threads, ctx_per_slot=1024)
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        proc = subprocess.Popen(python_module("edgereason.cli", "serve", "--model", str(model), "--port", str(port),
                                              "--threads", str(threads), "--slots", str(slots), "--ctx-per-slot",
                                              "1024", "--max-queue", str(max_queue), "--timeout-s", "300",
                                              "--max-tokens", "512",
                                              "--max-n", str(max((16, *vote_ks))),  # the maj@k requests are n=k
                                              *(["--adapter", str(adapter)] if adapter else [])),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        health = wait_healthy(base, 300, process=proc)
        if health is None:
            raise RuntimeError("edgereason serve did not start")
        gw_name = health["model"]
        # The raw server samples as the gateway asks it to (the whole vocabulary, as OpenAI and vLLM do),
        # not with llama-server's own top-k 40 / min-p 0.05: same work on both sides of the ratio.
        sides = {"raw": (raw.url, raw.model_name, PLAIN_SAMPLING), "gateway": (base, gw_name, None)}
        rounds: list[dict[tuple[str, int], dict[str, float]]] = []
        for rep in range(repeats):
            done: dict[tuple[str, int], dict[str, float]] = {}
            for c in clients:
                for side in (("raw", "gateway") if rep % 2 == 0 else ("gateway", "raw")):
                    url, name, extra = sides[side]
                    done[(side, c)] = _drive(url, c, requests_each, tokens, name, extra)
            rounds.append(done)
        raw_ttft = _ttft(raw.url, raw.model_name)
        gw_ttft = _ttft(base, gw_name)
        raw.close()  # the anchor is done: maj@k and the load test run with the gateway alone
        maj = _maj_costs(base, gw_name, model, threads, list(vote_ks), tokens, repeats, adapter)
        load = _load(base, gw_name, load_clients, load_seconds, proc.pid)
    finally:
        raw.close()  # a no-op when already closed above
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    result["throughput"] = [{"clients": c,
                             "raw_tok_s": statistics.median(r[("raw", c)]["tok_s"] for r in rounds),
                             "gateway_tok_s": statistics.median(r[("gateway", c)]["tok_s"] for r in rounds),
                             "gateway_over_raw": statistics.median(r[("gateway", c)]["tok_s"] / r[("raw", c)]["tok_s"]
                                                                   for r in rounds)} for c in clients]
    result["ttft"] = {"raw_s": raw_ttft, "gateway_s": gw_ttft, "overhead_s": gw_ttft - raw_ttft}
    result["voting"] = maj
    result["load"] = load
    return result


def serve_bench_markdown(r: dict[str, Any]) -> list[str]:
    lines = ["", "## Server", "",
             f"`edgereason serve` (gateway + managed llama-server) against raw llama-server on the same file, "
             f"{r['slots']} slots, {r['threads']} threads, {r['tokens']}-token completions (EOS ignored), both "
             "sampling from the whole vocabulary (top_k 0, min_p 0: what the gateway asks llama-server for).", "",
             f"Throughput: medians of {r['repeats']} rounds alternating between the two.", "",
             "| clients | raw llama-server tok/s | through edgereason tok/s | ratio |", "|---|---|---|---|"]
    lines += [f"| {t['clients']} | {t['raw_tok_s']:.1f} | {t['gateway_tok_s']:.1f} | {100 * t['gateway_over_raw']:.0f}% |"
              for t in r["throughput"]]
    tt = r["ttft"]
    lines += ["", f"TTFT: raw {1000 * tt['raw_s']:.0f} ms, through edgereason {1000 * tt['gateway_s']:.0f} ms "
              f"(+{1000 * tt['overhead_s']:.0f} ms).", "",
              f"maj@k as one n=k request, in {r['repeats']} rounds of llama-batched-bench then the gateway; medians, "
              "and × the limit paired by round:", "",
              "| maj@k | wall s | × one sample | llama-batched-bench limit × one | × the limit | per round |",
              "|---|---|---|---|---|---|"]
    for k, v in r["voting"].items():
        lim, xl = v.get("raw_limit_x"), v.get("x_limit")
        lines.append(f"| {k} | {v['seconds']:.1f} | {v['x_single']:.2f} | {lim:.2f} | {xl:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in v['x_limit_runs'])} |"
                     if lim and xl else f"| {k} | {v['seconds']:.1f} | {v['x_single']:.2f} | | | |")
    load = r["load"]
    lines += ["", f"Load: {load['clients']} clients for {load['seconds']:.0f} s: statuses {load['statuses']} (errors other "
              f"than 429: {load['errors_other_than_429']}), {load['answers_per_min']:.0f} answers/min, latency p50 "
              f"{load['p50_s']:.2f} s / p99 {load['p99_s']:.2f} s, RSS (gateway + llama-server) "
              f"{load['rss_mb_start']:.0f} → {load['rss_mb_end']:.0f} MB (peak {load['rss_mb_peak']:.0f} MB)."]
    return lines


def write_serve_plot(r: dict[str, Any], out: Path) -> Path:
    from edgereason.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    cl = [t["clients"] for t in r["throughput"]]
    axes[0].plot(cl, [t["raw_tok_s"] for t in r["throughput"]], "o-", label="raw llama-server")
    axes[0].plot(cl, [t["gateway_tok_s"] for t in r["throughput"]], "s--", label="through edgereason")
    axes[0].set_xlabel("concurrent clients")
    axes[0].set_ylabel("completion tokens/s")
    axes[0].legend(fontsize=8)
    axes[0].set_title("aggregate throughput")
    series = r["load"]["rss_series"]
    axes[1].plot([t for t, _ in series], [m for _, m in series])
    axes[1].set_xlabel("seconds")
    axes[1].set_ylabel("RSS MB (gateway + llama-server)")
    axes[1].set_title(f"{r['load']['clients']}-client load")
    return save_figure(fig, out / "serve.png")


def dumps(r: dict[str, Any]) -> str:
    return json.dumps(r, indent=2)
