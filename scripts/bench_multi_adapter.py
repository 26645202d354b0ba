"""Several adapters on one base, measured against its anchors in the same run (issue #31's goals):
- memory: one llama-server with two LoRA adapters against two servers with one adapter each (RSS);
- throughput: 8 clients split 4 + 4 over the two adapters against 8 clients on one adapter (tokens/s,
  greedy, EOS ignored so every request decodes the same number of tokens).
    python scripts/bench_multi_adapter.py ADAPTER.gguf [OUT_DIR]
ADAPTER.gguf is a GGUF LoRA of the default model (an export's adapter-lora-f16.gguf); the second
adapter is a random LoRA made here, so the two differ."""
import concurrent.futures as cf
import json
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import make_adapter

from edgereason.backends.llama_server import LlamaServerBackend
from edgereason.export.llama_tools import convert_lora_to_gguf
from edgereason.models import resolve_model

a = Path(sys.argv[1])
out = Path(sys.argv[2] if len(sys.argv) > 2 else "results/multi-adapter")
out.mkdir(parents=True, exist_ok=True)
base = resolve_model("smollm2-135m", need_hf=True)
assert base.hf_dir is not None  # need_hf: resolve_model raises otherwise
b = out / "random.gguf"
if not b.is_file():
    peft = make_adapter(base.hf_dir, out / "peft-random", seed=3, std=0.05, targets=("q_proj", "v_proj", "down_proj"))
    convert_lora_to_gguf(peft, base.hf_dir, b, out / "convert.log")

def rss(backend):
    return psutil.Process(backend.process.pid).memory_info().rss / 2**20

def load(clients_models, n_each=4, tokens=64, url=None, names=None):
    def one(model):
        done = 0
        for _ in range(n_each):
            body = {"prompt": "Tom has 3 apples and buys 4 more. Then he", "max_tokens": tokens, "temperature": 0.0,
                    "ignore_eos": True, "top_k": 0, "min_p": 0.0, **lora(model)}
            r = httpx.post(f"{url}/completion", json=body, timeout=300).json()
            done += r["tokens_predicted"]
        return done
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(len(clients_models)) as pool:
        total = sum(pool.map(one, clients_models))
    return total / (time.perf_counter() - t0)

res = {}
# one server, two adapters
srv = LlamaServerBackend(str(base.gguf_path), adapters={"math": a, "logic": b}, slots=8, ctx_per_slot=512, threads=2)
ids = srv.adapter_ids


def lora(model):  # every adapter's scale on every request (as edgereason serve sends them); none for a one-adapter server
    return {"lora": [{"id": i, "scale": 1.0 if n == model else 0.0} for n, i in ids.items()]} if ids else {}


url = srv.url
load(["math"] * 2, n_each=1, url=url)  # warm
res["one_adapter_8_clients_tok_s"] = load(["math"] * 8, url=url)
res["split_8_clients_tok_s"] = load(["math"] * 4 + ["logic"] * 4, url=url)
res["one_adapter_8_clients_tok_s_again"] = load(["math"] * 8, url=url)
res["rss_one_server_two_adapters_mb"] = rss(srv)
srv.close()
# two servers, one adapter each
s1 = LlamaServerBackend(str(base.gguf_path), adapter=a, slots=8, ctx_per_slot=512, threads=2)
s2 = LlamaServerBackend(str(base.gguf_path), adapter=b, slots=8, ctx_per_slot=512, threads=2)
ids = {}
load(["x"], n_each=1, url=s1.url)
load(["x"], n_each=1, url=s2.url)
res["rss_two_servers_mb"] = rss(s1) + rss(s2)
res["rss_each_server_mb"] = [rss(s1), rss(s2)]
s1.close()
s2.close()
res["split_vs_one"] = res["split_8_clients_tok_s"] / ((res["one_adapter_8_clients_tok_s"] + res["one_adapter_8_clients_tok_s_again"]) / 2)
res["memory_one_vs_two"] = res["rss_one_server_two_adapters_mb"] / res["rss_two_servers_mb"]
print(json.dumps(res, indent=1))
(out / "multi-adapter.json").write_text(json.dumps(res, indent=1) + "\n")
