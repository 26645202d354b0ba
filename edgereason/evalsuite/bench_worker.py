"""One bench measurement in a fresh process: `python -m evalsuite.bench_worker JSON_SPEC`.

A fresh process per artifact and thread count makes load time and peak RSS honest (nothing cached
from an earlier model) and lets the caller run it under a memory limit. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(spec: dict) -> dict:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_threads=spec["threads"], n_batch=512,
                n_seq_max=spec.get("n_seq", 1), verbose=False)
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    # llama-bench's shapes: pp = one prompt of N tokens, tg = N tokens decoded one at a time.
    prompt = [(i * 7919) % (vocab - 100) + 50 for i in range(spec["pp"])]
    pp, tg = [], []
    for rep in range(spec["warmup"] + spec["repeats"]):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        pp_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(spec["tg"]):
            llm.eval([prompt[i % len(prompt)]])
        tg_s = time.perf_counter() - t
        if rep >= spec["warmup"]:
            pp.append(spec["pp"] / pp_s)
            tg.append(spec["tg"] / tg_s)
    out = {"load_s": load_s, "pp_tok_s": _stats(pp), "tg_tok_s": _stats(tg),
           "ms_per_token": 1000 / statistics.median(tg)}
    if spec.get("chat"):
        ttft, e2e, toks = [], [], []
        for messages in spec["chat"]:
            llm.reset()
            t = time.perf_counter()
            first = None
            n = 0
            for _chunk in llm.create_completion(messages, max_tokens=spec["answer_tokens"], temperature=0.0,
                                               stream=True, stop=spec.get("stop")):
                if first is None:
                    first = time.perf_counter() - t
                n += 1
            e2e.append(time.perf_counter() - t)
            ttft.append(first or e2e[-1])
            toks.append(n)
        out |= {"ttft_s": _stats(ttft), "answer_s": _stats(e2e), "answer_tokens": statistics.mean(toks),
                "problems_per_min": 60 / statistics.mean(e2e)}
    if spec.get("vote_ks") and spec.get("chat"):
        # maj@k cost: k samples of one reasoning answer decoded together (serve's llama.cpp path)
        # against one sample; sequential sampling would cost k times one.
        from edgereason.backends.llamacpp_parallel import ParallelDecoder

        ks = spec["vote_ks"]
        decoder = ParallelDecoder(llm, max(ks), spec["n_ctx"] + max(ks) * spec["answer_tokens"], spec["threads"])
        prompt = llm.tokenize(spec["chat"][0].encode(), add_bos=False, special=True)
        votes = {}
        for k in ks:
            samples, seconds = decoder.generate(prompt, k, spec["answer_tokens"], 0.7, 1.0, list(range(k)),
                                                spec.get("stop") or [], spec.get("grammar"))
            votes[str(k)] = {"seconds": seconds, "tokens": sum(s.tokens for s in samples)}
        base = votes[str(ks[0])]["seconds"]
        for v in votes.values():
            v["x_single"] = v["seconds"] / base
        out["voting"] = votes
        decoder.close()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    llm.close()
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure(spec)))
