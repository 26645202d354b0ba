"""Many sequences decoded together by llama.cpp in process: each distinct prompt evaluated once (the
prompts' common prefix once for all of them), the sequences that share it sharing its KV cells, one
batched `llama_decode` per step for every live sequence, and the next prompt admitted at the step a
live one finishes (continuous batching).

llama-cpp-python's high-level `Llama` decodes one sequence at a time, so k samples there would cost
k full generations. Here each distinct prompt is evaluated once (on its first sequence), its cache
cells are shared with the other sequences of that prompt (`llama_memory_seq_cp`, no copy in a
unified KV cache), and each step decodes one token for every live sequence in one `llama_decode`.
Every sequence has its own sampler chain (temperature, top-p, seed, grammar), so samples stay
independent and reproducible: this is maj@k and pass@k in eval, and GRPO's rollouts in training
(with the policy's LoRA applied through `set_lora`, and each token's logprob under the untempered
model, which is what the trainer compares its own logprobs with).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from edgereason.compat.llama_cpp import LlamaContext, model_of, suppress_stdout_stderr

# llama_token_data as a numpy record (id int32, logit float32, p float32), for whole-vocabulary passes.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class ParallelSample:
    text: str  # cut before a stop string (llama.cpp's convention)
    tokens: int
    finish_reason: str  # "stop" or "length"
    token_ids: list[int] = field(default_factory=list)  # every sampled token, stop string and EOS included
    logprobs: list[float] = field(default_factory=list)  # per token, under the untempered model (if asked)


@dataclass
class _Seq:
    prompt: int  # index of its distinct prompt
    sampler: ctypes.c_void_p | None  # llama.cpp's chain (grammar or top-p); None: sampled in numpy
    grammar: ctypes.c_void_p | None
    temperature: float = 1.0
    rng: np.random.Generator | None = None
    text: bytearray = field(default_factory=bytearray)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None
    forced: int | None = None  # the next token, decided already (EOS after a stop string)
    pos: int = 0  # position of the next token in this sequence


class ParallelDecoder:
    """A second llama.cpp context on an already-loaded model, sized for `max_seqs` sequences."""

    def __init__(self, llm: llama_cpp.Llama, max_seqs: int, n_ctx: int, threads: int) -> None:
        self.llm = llm
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = max(512, max_seqs)
        params.n_ubatch = params.n_batch
        params.n_seq_max = max_seqs + 1  # and one more for the prompts' shared prefix
        params.kv_unified = True  # shared prompt cells, any sequence may use any cell
        params.n_threads = params.n_threads_batch = threads
        # One KV pool for all sequences reads to llama.cpp as one long sequence: its "n_ctx_seq >
        # n_ctx_train" warning is harmless here (no sequence exceeds the trained context).
        with suppress_stdout_stderr(disable=False):
            self.ctx = LlamaContext(model=model_of(llm), params=params, verbose=False)
        self.max_seqs = max_seqs
        self.n_ctx = n_ctx
        self.n_batch = int(params.n_batch)
        self.vocab = llama_cpp.llama_model_get_vocab(model_of(llm).model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._adapter: ctypes.c_void_p | None = None
        self.last_stats: dict[str, Any] = {}  # what the last generate_batch did (prompt tokens, admissions, ...)

    # ---- LoRA --------------------------------------------------------------------------------
    def set_lora(self, path: Path | None, scale: float = 1.0) -> None:
        """Apply a GGUF LoRA to this context (None removes it); the previous one is freed."""
        old = self._adapter
        ctx = self.ctx.ctx
        if path is None:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
            self._adapter = None
        else:
            adapter = llama_cpp.llama_adapter_lora_init(model_of(self.llm).model, str(path).encode())
            if not adapter:
                raise RuntimeError(f"llama.cpp could not load the LoRA {path}")
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(scale)
            if llama_cpp.llama_set_adapters_lora(ctx, arr, 1, scales) != 0:
                llama_cpp.llama_adapter_lora_free(adapter)
                raise RuntimeError(f"llama.cpp could not apply the LoRA {path}")
            self._adapter = adapter
        if old is not None:
            llama_cpp.llama_adapter_lora_free(old)

    # ---- sampling ----------------------------------------------------------------------------
    def _sampler(self, temperature: float, top_p: float, seed: int) -> ctypes.c_void_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_p < 1.0:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _logits(self, ctx: ctypes.c_void_p, idx: int) -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))

    def _sample(self, chain: ctypes.c_void_p, grammar: ctypes.c_void_p | None, ctx: ctypes.c_void_p, idx: int) -> int:
        """llama.cpp's own trick (common_sampler_sample): sample without the grammar, check only that
        token against it, and run the grammar over the whole vocabulary only when it is rejected.
        Masking 49k candidates per token per sequence would otherwise cost more than the decode."""
        tok = int(llama_cpp.llama_sampler_sample(chain, ctx, idx))
        if grammar is None:
            return tok
        one = llama_cpp.llama_token_data(tok, 1.0, 0.0)
        arr = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(arr))
        if one.logit != float("-inf"):
            llama_cpp.llama_sampler_accept(grammar, tok)
            return tok
        cand = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        cand["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cand["logit"] = self._logits(ctx, idx)
        cand["p"] = 0.0
        arr = llama_cpp.llama_token_data_array(cand.ctypes.data_as(llama_cpp.llama_token_data_p), self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(arr))
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(arr))
        tok = int(cand["id"][arr.selected])
        llama_cpp.llama_sampler_accept(grammar, tok)
        return tok

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompt: list[int], n: int, max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int], stop: list[str], grammar: str | None = None,
                 should_stop: Callable[[], bool] | None = None) -> tuple[list[ParallelSample], float]:
        """n completions of one prompt; returns them and the seconds spent."""
        if len(prompt) + n * max_tokens > self.n_ctx:
            max_tokens = max(1, (self.n_ctx - len(prompt)) // n)
        return self.generate_batch([prompt] * n, [temperature] * n, seeds, max_tokens, top_p, stop, grammar,
                                   should_stop)

    def generate_batch(self, prompts: Sequence[Sequence[int]], temperatures: Sequence[float], seeds: Sequence[int],
                       max_tokens: int, top_p: float = 1.0, stop: Sequence[str] = (), grammar: str | None = None,
                       should_stop: Callable[[], bool] | None = None,
                       logprobs: bool = False, end_token: int | None = None,
                       max_live_prompts: int | None = None) -> tuple[list[ParallelSample], float]:
        """One completion per (prompt, temperature, seed) row; rows with the same prompt share its
        evaluation and are decoded together. With `logprobs`, each token's log-probability under the
        untempered model is returned too. With `end_token` (the EOS id), a sequence that hits a stop
        string ends with that token (forced; its model log-probability reported): a trainer then sees
        a terminated completion and learns to end there.

        Continuous batching: a prompt's rows are admitted as a group when enough sequence slots and KV
        cells are free (and fewer than `max_live_prompts` prompts are live), and each finished row frees
        its slot and cells at once, so a long answer does not hold back the rows after it. Admission
        follows the rows' order and depends only on which rows finish when, never on timing: the same
        call gives the same tokens. The distinct prompts' common token prefix (a chat's system prompt
        and template) is evaluated once and shared by every row."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(tuple(p), []).append(i)
        distinct = list(groups)
        prefix = _common_prefix(distinct) if len(distinct) > 1 else 0

        def cells(p: tuple[int, ...]) -> int:
            """KV cells a prompt's rows may take beyond the shared prefix: its own tokens once (shared by
            its rows) and up to `max_tokens` per row."""
            return len(p) - prefix + len(groups[p]) * max_tokens

        for p, rows in groups.items():
            if len(rows) > self.max_seqs:
                raise ValueError(f"{len(rows)} sequences of one prompt exceed this context's {self.max_seqs}")
            need = prefix + cells(p)
            if need > self.n_ctx:
                raise ValueError(f"{need} KV cells needed (prompt + {len(rows)} x {max_tokens} tokens) exceed this "
                                 f"context's {self.n_ctx}")
        t0 = time.perf_counter()
        ctx = self.ctx.ctx
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(mem, True)
        n_batch = self.n_batch
        batch = llama_cpp.llama_batch_init(max(n_batch, self.max_seqs), 0, self.max_seqs + 1)
        # Without a grammar or top-p, all live sequences are sampled at once in numpy from the logits
        # matrix (one softmax per row, a seeded generator per sequence): llama.cpp's per-sequence
        # sampler chains spend more per token on 49k candidates than the batched decode itself.
        vectorised = grammar is None and top_p >= 1.0
        index = {p: j for j, p in enumerate(distinct)}
        seqs = [_Seq(index[tuple(p)], None, None, t, np.random.default_rng(s) if vectorised else None)
                for p, t, s in zip(prompts, temperatures, seeds)]
        stop_bytes = [s.encode() for s in stop if s]
        # what the call did, for tests and benchmarks: when each prompt was admitted and each finished
        # (in decode steps), the prompt tokens evaluated, the most rows and prompts live at once
        stats: dict[str, Any] = {"prefix_tokens": prefix, "prompt_tokens_evaluated": 0, "max_live_rows": 0,
                                 "max_live_prompts": 0, "decode_steps": 0, "admitted_at": [], "finished_at": []}
        self.last_stats = stats

        def step(s: _Seq, idx: int, tok: int | None = None, logprob: float | None = None) -> None:
            """Take a sequence's next token (sampled here from the logits at batch index `idx` unless
            given) and decide whether the sequence is done."""
            if tok is None:
                assert s.sampler is not None
                tok = s.forced if s.forced is not None else self._sample(s.sampler, s.grammar, ctx, idx)
                if logprobs:
                    row = self._logits(ctx, idx).astype(np.float64)
                    m = row.max()
                    logprob = float(row[tok] - m - np.log(np.exp(row - m).sum()))
            if logprobs:
                s.logprobs.append(float(logprob))  # type: ignore[arg-type]
            s.ids.append(tok)
            if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                s.finish = "stop"
                return
            s.text += self.llm.detokenize([tok])
            if any(st in s.text for st in stop_bytes):
                if end_token is not None and s.forced is None and len(s.ids) < max_tokens:
                    s.forced = end_token
                else:
                    s.finish = "stop"
            elif len(s.ids) >= max_tokens:
                s.finish = "length"

        def decode(tokens: list[tuple[int, int, int]], last_logits: bool) -> None:
            """(token, position, slot) rows in chunks of n_batch; logits for the very last one if asked."""
            for start in range(0, len(tokens), n_batch):
                chunk = tokens[start:start + n_batch]
                for k, (tok, pos, slot) in enumerate(chunk):
                    _put(batch, k, tok, pos, [slot], last_logits and start + k == len(tokens) - 1)
                batch.n_tokens = len(chunk)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed on the prompts")
            stats["prompt_tokens_evaluated"] += len(tokens)

        free = list(range(self.max_seqs))
        slot_of: dict[int, int] = {}  # row -> its llama.cpp sequence id while live
        live_groups: dict[int, int] = {}  # distinct prompt -> its rows still decoding
        pending = list(range(len(distinct)))
        try:
            if prefix:  # the common prefix on its own sequence id, never freed during the call
                decode([(tok, pos, self.max_seqs) for pos, tok in enumerate(distinct[0][:prefix])], False)
            while True:
                # 1. admit whole prompts in order while slots, cells and the prompt limit allow
                while pending and (max_live_prompts is None or len(live_groups) < max_live_prompts):
                    j = pending[0]
                    p, rows = distinct[j], groups[distinct[j]]
                    # cells are reserved per live prompt until all its rows are done (the shared prefix's too)
                    reserved = prefix + sum(cells(distinct[g]) for g in live_groups)
                    if len(rows) > len(free) or reserved + cells(p) > self.n_ctx:
                        break
                    pending.pop(0)
                    slots = [free.pop(0) for _ in rows]
                    owner = slots[0]
                    if prefix:
                        llama_cpp.llama_memory_seq_cp(mem, self.max_seqs, owner, -1, -1)
                    decode([(tok, pos, owner) for pos, tok in enumerate(p) if pos >= prefix], True)
                    for i, slot in zip(rows, slots):
                        if slot != owner:
                            llama_cpp.llama_memory_seq_cp(mem, owner, slot, -1, -1)
                        slot_of[i] = slot
                        seqs[i].pos = len(p)
                        if not vectorised:
                            seqs[i].sampler = self._sampler(temperatures[i], top_p, seeds[i])
                            if grammar:
                                seqs[i].grammar = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(),
                                                                                       b"root")
                    live_groups[j] = len(rows)
                    stats["admitted_at"].append(stats["decode_steps"])
                    # the prompt's last token was the batch's only one asking for logits: row 0
                    self._step_rows(ctx, [seqs[i] for i in rows], [batch.n_tokens - 1] * len(rows), [0] * len(rows),
                                    step, vectorised)
                    if self._release(mem, seqs, rows, slot_of, free, live_groups):
                        stats["finished_at"].append(stats["decode_steps"])
                live = [i for i in slot_of if seqs[i].finish is None]
                if not live or (should_stop is not None and should_stop()):
                    break
                stats["max_live_rows"] = max(stats["max_live_rows"], len(live))
                stats["max_live_prompts"] = max(stats["max_live_prompts"], len(live_groups))
                # 2. one token for every live sequence per llama_decode
                for k, i in enumerate(live):
                    _put(batch, k, seqs[i].ids[-1], seqs[i].pos, [slot_of[i]], True)
                    seqs[i].pos += 1
                batch.n_tokens = len(live)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed while sampling")
                stats["decode_steps"] += 1
                every = list(range(len(live)))  # every token asks for logits: batch index = output row
                self._step_rows(ctx, [seqs[i] for i in live], every, every, step, vectorised)
                for i in live:
                    if seqs[i].finish is not None and i in slot_of:
                        if self._release(mem, seqs, groups[distinct[seqs[i].prompt]], slot_of, free, live_groups):
                            stats["finished_at"].append(stats["decode_steps"])
            out = []
            for s in seqs:
                text = s.text.decode("utf-8", errors="replace")
                for st in stop:  # llama.cpp convention: the stop string itself is not returned as text
                    cut = text.find(st) if st else -1
                    if cut >= 0:
                        text = text[:cut]
                out.append(ParallelSample(text, len(s.ids), s.finish or "length", s.ids, s.logprobs))
            return out, time.perf_counter() - t0
        finally:
            for s in seqs:
                if s.sampler is not None:
                    llama_cpp.llama_sampler_free(s.sampler)
                if s.grammar is not None:
                    llama_cpp.llama_sampler_free(s.grammar)
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_clear(mem, True)

    @staticmethod
    def _release(mem: Any, seqs: list[_Seq], rows: list[int], slot_of: dict[int, int], free: list[int],
                 live_groups: dict[int, int]) -> bool:
        """Free the slots of a prompt's finished rows; once all of them are done, the prompt leaves the
        live ones (its prompt cells are shared by its rows until then). Returns whether it just did."""
        for i in rows:
            if i in slot_of and seqs[i].finish is not None:
                slot = slot_of.pop(i)
                # the row's own cells go; cells still shared with another sequence stay
                llama_cpp.llama_memory_seq_rm(mem, slot, -1, -1)
                free.append(slot)
                free.sort()
                live_groups[seqs[i].prompt] -= 1
        j = seqs[rows[0]].prompt
        if live_groups.get(j) == 0:
            del live_groups[j]
            return True
        return False

    def _step_rows(self, ctx: ctypes.c_void_p, seqs: list[_Seq], batch_idx: list[int], rows: list[int],
                   step: Callable[..., None], vectorised: bool) -> None:
        """Advance each sequence from the last decode: llama.cpp's samplers address logits by the
        token's index in the batch, the logits matrix by output row (the order of the tokens that
        asked for logits)."""
        if not vectorised:
            for s, i in zip(seqs, batch_idx):
                step(s, i)
            return
        n_out = max(rows) + 1
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_out, self.n_vocab))[rows]
        logits = logits.astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))  # untempered normaliser
        for k, s in enumerate(seqs):
            if s.forced is not None:
                tok = s.forced
            elif s.temperature <= 0:
                tok = int(logits[k].argmax())
            else:
                z = (logits[k] - top[k]) / s.temperature
                p = np.exp(z)
                cdf = np.cumsum(p)
                tok = int(np.searchsorted(cdf, s.rng.random() * cdf[-1], side="right"))  # type: ignore[union-attr,call-overload]
                tok = min(tok, self.n_vocab - 1)
            step(s, batch_idx[k], tok, float(logits[k, tok] - log_z[k]))

    def close(self) -> None:
        if self._adapter is not None:
            llama_cpp.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        self.ctx.close()


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least its last token to evaluate (whose logits
    give its first sample)."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    k = 0
    while k < n and all(p[k] == first[k] for p in prompts):
        k += 1
    return k


def _put(batch: Any, i: int, token: int, pos: int, seqs: list[int], logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = len(seqs)
    for j, s in enumerate(seqs):
        batch.seq_id[i][j] = s
    batch.logits[i] = logits
