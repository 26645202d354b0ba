"""n samples of one prompt decoded together by llama.cpp: one prompt pass, n sequences sharing its
KV cells, one batched decode per step for all live sequences.

llama-cpp-python's high-level `Llama` decodes one sequence at a time, so maj@k there would cost k
full generations. Here the prompt is evaluated once (sequence 0), its cache cells are shared with
sequences 1..n-1 (`llama_memory_seq_cp`, no copy in a unified KV cache), and each step decodes one
token for every live sequence in a single `llama_decode` call. Each sequence has its own sampler
chain (grammar, top-p, temperature, seed), so samples stay independent and reproducible.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

# llama_token_data as a numpy record (id int32, logit float32, p float32), for whole-vocabulary passes.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class ParallelSample:
    text: str
    tokens: int
    finish_reason: str  # "stop" or "length"


class ParallelDecoder:
    """A second llama.cpp context on an already-loaded model, sized for `max_seqs` sequences."""

    def __init__(self, llm: llama_cpp.Llama, max_seqs: int, n_ctx: int, threads: int) -> None:
        self.llm = llm
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = max(512, max_seqs)
        params.n_ubatch = params.n_batch
        params.n_seq_max = max_seqs
        params.kv_unified = True  # shared prompt cells, any sequence may use any cell
        params.n_threads = params.n_threads_batch = threads
        self.ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.max_seqs = max_seqs
        self.n_ctx = n_ctx
        self.vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def _sampler(self, temperature: float, top_p: float, seed: int):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _sample(self, chain, grammar, ctx, idx: int) -> int:
        """llama.cpp's own trick (common_sampler_sample): sample without the grammar, check only that
        token against it, and run the grammar over the whole vocabulary only when it is rejected.
        Masking 49k candidates per token per sequence would otherwise cost more than the decode."""
        tok = llama_cpp.llama_sampler_sample(chain, ctx, idx)
        if grammar is None:
            return tok
        one = llama_cpp.llama_token_data(tok, 1.0, 0.0)
        arr = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(arr))
        if one.logit != float("-inf"):
            llama_cpp.llama_sampler_accept(grammar, tok)
            return tok
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        cand = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        cand["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(cand.ctypes.data_as(llama_cpp.llama_token_data_p), self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        tok = int(cand["id"][arr.selected])
        llama_cpp.llama_sampler_accept(grammar, tok)
        return tok

    def generate(self, prompt: list[int], n: int, max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int], stop: list[str], grammar: str | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[list[ParallelSample], float]:
        """n completions of `prompt`; returns them and the seconds spent."""
        if n > self.max_seqs:
            raise ValueError(f"{n} parallel samples exceed this context's {self.max_seqs} sequences")
        if len(prompt) + n * max_tokens > self.n_ctx:
            max_tokens = max(1, (self.n_ctx - len(prompt)) // n)
        t0 = time.perf_counter()
        ctx = self.ctx.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(mem, True)
        batch = llama_cpp.llama_batch_init(max(len(prompt), n, 1), 0, self.max_seqs)
        samplers = [self._sampler(temperature, top_p, seeds[i]) for i in range(n)]
        grammars = [llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root") if grammar else None
                    for _ in range(n)]
        try:
            # 1. the prompt once, as sequence 0, logits for its last token only
            for i, tok in enumerate(prompt):
                _put(batch, i, tok, i, [0], i == len(prompt) - 1)
            batch.n_tokens = len(prompt)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed on the prompt")
            for s in range(1, n):
                llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
            logits_idx = [len(prompt) - 1] * n
            pieces: list[bytearray] = [bytearray() for _ in range(n)]
            counts = [0] * n
            finish: list[str | None] = [None] * n
            pos = len(prompt)
            while True:
                live = []
                for s in range(n):
                    if finish[s] is not None:
                        continue
                    tok = self._sample(samplers[s], grammars[s], ctx, logits_idx[s])
                    if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                        finish[s] = "stop"
                        continue
                    pieces[s] += self.llm.detokenize([tok])
                    counts[s] += 1
                    text = pieces[s].decode("utf-8", errors="ignore")
                    if any(st in text for st in stop):
                        finish[s] = "stop"
                        continue
                    if counts[s] >= max_tokens:
                        finish[s] = "length"
                        continue
                    live.append((s, tok))
                if not live or (should_stop is not None and should_stop()):
                    break
                for j, (s, tok) in enumerate(live):
                    _put(batch, j, tok, pos, [s], True)
                    logits_idx[s] = j
                batch.n_tokens = len(live)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed while sampling")
                pos += 1
            out = []
            for s in range(n):
                text = pieces[s].decode("utf-8", errors="replace")
                for st in stop:  # llama.cpp convention: the stop string itself is not returned
                    cut = text.find(st)
                    if cut >= 0:
                        text = text[:cut]
                out.append(ParallelSample(text, counts[s], finish[s] or "length"))  # cut by should_stop: "length"
            return out, time.perf_counter() - t0
        finally:
            for sm in samplers + [g for g in grammars if g is not None]:
                llama_cpp.llama_sampler_free(sm)
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_clear(mem, True)

    def close(self) -> None:
        self.ctx.close()


def _put(batch, i: int, token: int, pos: int, seqs: list[int], logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = len(seqs)
    for j, s in enumerate(seqs):
        batch.seq_id[i][j] = s
    batch.logits[i] = logits
