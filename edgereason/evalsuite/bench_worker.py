"""One bench measurement in a fresh process: `python -m edgereason.evalsuite.bench_worker JSON_SPEC`
(a GGUF on llama.cpp, or with `"engine": "openvino"` an OpenVINO IR folder on openvino-genai).

A fresh process per artifact and thread count makes load time and peak RSS honest (nothing cached
from an earlier model) and lets the caller run it under a memory limit. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(spec: dict) -> dict:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    # The prompt pass at the measured thread count too (llama-cpp-python's default uses every core).
    llm = Llama(model_path=spec["model"], lora_path=spec.get("lora"), n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], n_batch=512,
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
        if spec.get("lora"):  # the decoder has its own context: the LoRA is applied there too
            decoder.set_lora(Path(spec["lora"]))
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


def measure_openvino(spec: dict) -> dict:
    """The same figures for an OpenVINO IR folder on openvino-genai (its own perf metrics: TTFT and
    time per output token, measured inside the pipeline)."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    # Prefix caching off: the repeats reuse one prompt, and a cached prefix measured 10 ms for 512
    # tokens (50x the real prefill); the llama.cpp side resets its cache before every repeat too.
    scheduler = ov_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    t0 = time.perf_counter()
    pipe = ov_genai.LLMPipeline(spec["model"], "CPU", INFERENCE_NUM_THREADS=spec["threads"], scheduler_config=scheduler)
    load_s = time.perf_counter() - t0
    vocab = json.load(open(f"{spec['model']}/config.json"))["vocab_size"]
    prompt = ov.Tensor(np.array([[(i * 7919) % (vocab - 100) + 50 for i in range(spec["pp"])]], dtype=np.int64))

    def config(n: int) -> ov_genai.GenerationConfig:
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens, cfg.ignore_eos, cfg.apply_chat_template = n, True, False
        return cfg

    pp, tg = [], []
    for rep in range(spec["warmup"] + spec["repeats"]):
        metrics = pipe.generate(prompt, config(spec["tg"])).perf_metrics
        if rep >= spec["warmup"]:
            pp.append(spec["pp"] / (metrics.get_ttft().mean / 1000))
            tg.append(1000 / metrics.get_tpot().mean)
    out = {"load_s": load_s, "pp_tok_s": _stats(pp), "tg_tok_s": _stats(tg), "ms_per_token": 1000 / statistics.median(tg)}
    if spec.get("chat"):
        tok = pipe.get_tokenizer()
        ttft, e2e, toks = [], [], []
        for text in spec["chat"]:
            cfg = config(spec["answer_tokens"])
            cfg.ignore_eos = False
            if spec.get("stop"):
                cfg.stop_strings = set(spec["stop"])
            t = time.perf_counter()
            result = pipe.generate(tok.encode([text], add_special_tokens=False), cfg)
            e2e.append(time.perf_counter() - t)
            ttft.append(result.perf_metrics.get_ttft().mean / 1000)
            toks.append(len(result.tokens[0]))
        out |= {"ttft_s": _stats(ttft), "answer_s": _stats(e2e), "answer_tokens": statistics.mean(toks),
                "problems_per_min": 60 / statistics.mean(e2e)}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del pipe
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure_openvino(spec) if spec.get("engine") == "openvino" else measure(spec)))
