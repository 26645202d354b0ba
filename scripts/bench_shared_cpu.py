"""llama.cpp's token generation on a CPU it shares: threads x `--poll`, idle and beside a busy core.

A shared machine (CI, a laptop running a training job, an edge device with other work) takes cores
from llama.cpp mid-token. Its threads meet at a barrier on every operation, so one descheduled
thread stalls the others, and polling threads burn the core the other work needs. This runs
`llama-bench` (token generation, and prompt processing) for each thread count and poll level, first
on the idle machine and then beside `--busy` processes that each spin one core, and prints tokens/s
with the ratio to llama.cpp's defaults (all cores, poll 50) measured idle in the same run.

    python scripts/bench_shared_cpu.py [--model M.gguf] [--busy 1] [--out docs/results/shared-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgereason.models import resolve_model
from edgereason.native import tool

_SPIN = "while True: pass"


def bench(model: Path, threads: int, poll: int, tokens: int, prompt: int, reps: int) -> dict[str, float]:
    """tokens/s of generation (tg) and prompt processing (pp), llama-bench's averages."""
    out = subprocess.run([str(tool("llama-bench")), "-m", str(model), "-t", str(threads), "--poll", str(poll),
                          "-p", str(prompt), "-n", str(tokens), "-r", str(reps), "-o", "jsonl"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    found = {"tg" if r["n_gen"] else "pp": float(r["avg_ts"]) for r in rows}
    return found


def run(model: Path, busy: int, tokens: int, prompt: int, reps: int) -> list[dict[str, Any]]:
    cores = os.cpu_count() or 1
    thread_counts = sorted({cores, max(cores - busy, 1)}, reverse=True)
    results: list[dict[str, Any]] = []
    for load in ("idle", f"{busy} busy core{'s' if busy > 1 else ''}"):
        spinners = [] if load == "idle" else [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(busy)]
        try:
            for threads in thread_counts:
                for poll in (50, 0):
                    r = {"load": load, "threads": threads, "poll": poll,
                         **bench(model, threads, poll, tokens, prompt, reps)}
                    results.append(r)
                    print(f"{load:>12}  threads {threads}  poll {poll:>2}:  tg {r['tg']:7.1f} tok/s   "
                          f"pp {r['pp']:7.1f} tok/s", flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait(timeout=10)
    anchor = next(r for r in results if r["load"] == "idle" and r["threads"] == cores and r["poll"] == 50)
    for r in results:
        r["x_default_idle_tg"] = r["tg"] / anchor["tg"]
        r["x_default_idle_pp"] = r["pp"] / anchor["pp"]
    return results


def report(results: list[dict[str, Any]], model: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "shared-cpu.json").write_text(json.dumps({"model": model.name, "cpu_count": os.cpu_count(),
                                                     "results": results}, indent=2), encoding="utf-8")
    lines = [f"# llama.cpp on a shared CPU: `{model.name}`, {os.cpu_count()} cores", "",
             "| load | threads | poll | generation tok/s | × default idle | prompt tok/s | × default idle |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['load']} | {r['threads']} | {r['poll']} | {r['tg']:.1f} | {r['x_default_idle_tg']:.2f} | "
              f"{r['pp']:.1f} | {r['x_default_idle_pp']:.2f} |" for r in results]
    path = out / "shared-cpu.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="a GGUF or an embedded model name")
    ap.add_argument("--busy", type=int, default=1, help="cores kept busy by spinning processes in the loaded half")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("results/shared-cpu"))
    args = ap.parse_args(argv)
    model = resolve_model(args.model).require_gguf()
    results = run(model, args.busy, args.tokens, args.prompt, args.reps)
    print(f"report: {report(results, model, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
