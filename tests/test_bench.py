"""A real bench run with tiny sizes; device-profile arithmetic from GGUF metadata; memory limits;
the server benchmark against raw llama-server."""

import json

import pytest

from edgereason.cpu import default_threads
from edgereason.evalsuite.bench import PROFILES, BenchConfig, _run_worker, fit, run_bench, write_bench
from edgereason.gguf_meta import gguf_info

pytestmark = pytest.mark.model


def test_kv_cache_size_from_gguf_metadata(default_model):
    shape = gguf_info(default_model.gguf_path)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims; K and V in f16 -> 30 * 3 * (64 + 64) * 2 bytes.
    assert (shape["layers"], shape["kv_heads"], shape["key_length"]) == (30, 3, 64)
    assert shape["kv_bytes_per_token"] == 30 * 3 * 128 * 2
    f = fit(default_model.gguf_path, PROFILES["edge-4gb"], 2048)
    assert f["fits"] and f["kv_mb"] == round(23040 * 2048 / 2**20, 1)
    assert f["max_context"] == shape["context_length"]  # the budget is not the limit for 135M
    tiny = fit(default_model.gguf_path, PROFILES["edge-4gb"].__class__("tiny", 0.5, 0.45), 2048)
    assert tiny["max_context"] < shape["context_length"] and tiny["max_parallel_sequences_at_n_ctx"] < f["max_parallel_sequences_at_n_ctx"]


def test_gpu_offload_counts_the_offloaded_layers_against_the_gpu(default_model):
    """--gpu-layers splits the weights by the GGUF's own tensors: N layers' bytes (and their KV cache)
    on the GPU, the rest in RAM; auto takes as many as fit; a GPU too small is reported, not assumed."""
    from edgereason.evalsuite.bench import DeviceProfile
    from edgereason.gpu_layers import GPU_COMPUTE_RESERVE_BYTES, layer_weight_bytes

    path = default_model.gguf_path
    per, head, other = layer_weight_bytes(path)
    assert len(per) == 30 and sum(per) + head + other <= path.stat().st_size  # the tensors, without the header
    kv_layer = 23040 * 2048 // 30
    ten = fit(path, PROFILES["jetson-orin-nano-8gb"], 2048, "10")["offload"]
    assert ten["layers_on_gpu"] == 10 and ten["gpu_mb"] == round((sum(per[-10:]) + 10 * kv_layer) / 2**20, 1)
    assert ten["gpu_need_mb"] == round((sum(per[-10:]) + 10 * kv_layer + GPU_COMPUTE_RESERVE_BYTES) / 2**20, 1)
    every = fit(path, PROFILES["laptop-gpu-4gb"], 2048, "auto")
    assert every["offload"]["layers_on_gpu"] == 30 and every["fits"]  # 135M fits a 4 GB GPU whole
    # a GPU with room for the reserve and about half the layers: auto stops where the next layer would not fit
    budget = GPU_COMPUTE_RESERVE_BYTES + sum(per[-15:]) + 15 * kv_layer + 1000
    half = fit(path, DeviceProfile("small-gpu", 8, 6, gpu_gib=budget / 2**30), 2048, "auto")["offload"]
    assert half["layers_on_gpu"] == 15 and half["fits_gpu"]
    over = fit(path, DeviceProfile("small-gpu", 8, 6, gpu_gib=budget / 2**30), 2048, "all")
    assert over["offload"]["layers_on_gpu"] == 30 and not over["offload"]["fits_gpu"] and not over["fits"]
    assert "offload" not in fit(path, PROFILES["edge-4gb"], 2048)  # no GPU on that profile


def test_a_memory_limit_really_stops_a_model_that_does_not_fit(default_model):
    spec = {"model": str(default_model.gguf_path), "n_ctx": 512, "threads": 1, "pp": 16, "tg": 2, "warmup": 0, "repeats": 1}
    assert "error" in _run_worker(spec, memory_limit_bytes=64 * 2**20)
    ok = _run_worker(spec, memory_limit_bytes=3 * 2**30)
    assert "error" not in ok and ok["peak_rss_mb"] > 50


def test_tiny_real_bench_writes_json_markdown_and_plots(tmp_path, default_model):
    cfg = BenchConfig(models=["smollm2-135m"], threads=[1, 2], pp=32, tg=8, repeats=2, warmup=0, n_ctx=512,
                      contexts=[64, 256], problems=1, answer_tokens=16, device_profile="edge-4gb")
    results = run_bench(cfg)
    report = write_bench(results, tmp_path)
    data = json.loads((tmp_path / "bench.json").read_text())
    art = data["artifacts"][0]
    assert [r["threads"] for r in art["runs"]] == [1, 2]
    for r in art["runs"]:
        assert r["load_s"] > 0 and r["pp_tok_s"]["min"] <= r["pp_tok_s"]["median"] <= r["pp_tok_s"]["max"]
        # a measured speed, not a speed goal: an oversubscribed machine (llama.cpp threads spin) ran 0.2 tok/s
        assert r["tg_tok_s"]["median"] > 0 and r["peak_rss_mb"] > 50
    assert "ttft_s" in art["runs"][1] and art["runs"][1]["problems_per_min"] > 0
    assert [c["prompt_tokens"] for c in art["context"]] == [64, 256]
    assert art["device_profile"]["confirmed_under_limit"] is True
    assert data["machine"]["cores"] >= 1 and data["machine"]["libraries"]["llama-cpp-python"]
    text = report.read_text()
    assert "pp tok/s" in text and "edge-4gb" in text
    for png in ("speed.png", "context.png"):
        assert (tmp_path / png).stat().st_size > 5000


def test_server_bench_against_raw_llama_server(default_model, tmp_path):
    from edgereason.evalsuite.serve_bench import run_serve_bench, serve_bench_markdown, write_serve_plot

    r = run_serve_bench(default_model.gguf_path, threads=default_threads(), slots=2, clients=(1, 2), tokens=16, requests_each=1,
                        vote_ks=(2,), load_clients=8, load_seconds=6, max_queue=1)
    for t in r["throughput"]:  # measured speeds, not floors: the gateway measured 0.34 tok/s beside another job
        assert t["raw_tok_s"] > 0 and t["gateway_tok_s"] > 0 and t["gateway_over_raw"] > 0
    assert r["ttft"]["raw_s"] > 0 and r["ttft"]["gateway_s"] > 0
    vote = r["voting"]["2"]
    assert vote["tokens"] == 2 * 16 and vote["x_single"] > 0 and vote["raw_limit_x"] > 0
    # the limit is measured in every round, and the ratio to it is paired by round
    assert len(vote["raw_limit_runs"]) == len(vote["x_limit_runs"]) == r["repeats"] and vote["x_limit"] > 0
    load = r["load"]
    assert load["ok"] >= 1 and load["errors_other_than_429"] == 0
    assert load["statuses"].get("429", 0) >= 1  # 8 clients on 2 slots and a queue of 1: the bound is enforced
    assert load["p99_s"] >= load["p50_s"] > 0 and load["rss_mb_peak"] > 50
    text = "\n".join(serve_bench_markdown(r))
    assert "raw llama-server" in text and "llama-batched-bench" in text
    assert write_serve_plot(r, tmp_path).stat().st_size > 5000
