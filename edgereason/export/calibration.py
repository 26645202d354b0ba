"""The importance matrix, calibrated on the model's own reasoning.

llama.cpp's quantizer rounds each weight block to minimise error weighted by how strongly each input
channel is activated (`llama-imatrix`: the mean squared activation per channel of every matrix
multiply). The activations should come from what the model will serve, so the calibration text is
the model's own format-valid answers to training problems, rendered exactly as served: chat
template, system prompt, the reasoning prefill, tags and end-of-turn. We run llama.cpp's own
`llama-imatrix` (the same build as the quantizer) on the unquantized GGUF: computing it in torch and
writing llama.cpp's file format ourselves would duplicate a tool that is already here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgereason.backends.base import SamplingParams
from edgereason.export.answers import training_problems
from edgereason.export.files import ExportError, atomic_output, sha256_file
from edgereason.export.llama_tools import native_tool, run_tool
from edgereason.formats import ReasoningFormat

CONTEXT = 512  # tokens per imatrix chunk: a few answers each
TEMPERATURE = 0.7  # sampled, so the traces cover what the model says, not only its single greedy path


@dataclass
class Calibration:
    text_file: Path
    problems: int
    traces: int
    valid_traces: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"problems": self.problems, "traces": self.traces, "valid_traces": self.valid_traces,
                "text_sha256": sha256_file(self.text_file), "seconds": round(self.seconds, 1)}


def calibration_text(gguf: Path, fmt: ReasoningFormat, out: Path, problems: int, sets: Sequence[str],
                     threads: int | None = None, samples: int = 2) -> Calibration:
    """Write the model's own answers to `problems` training problems (`samples` each) as served text.
    Format-valid answers are kept; if fewer than a quarter are valid (an untrained base), all are
    kept: they are still the model's own distribution."""
    from edgereason.backends.llamacpp import LlamaCppBackend

    t0 = time.perf_counter()
    chosen = training_problems(problems, sets, seed=1)  # seed 1: not the answer check's problems
    backend = LlamaCppBackend(str(gguf), n_ctx=1024, threads=threads)
    try:
        params = SamplingParams(max_tokens=256, temperature=TEMPERATURE, n=samples, seed=0,
                                stop=fmt.stop_sequences(), prefix=fmt.prefill)
        rows = backend.chat([fmt.messages(p.question) for p in chosen], params)
        traces = [(p, c.text) for p, row in zip(chosen, rows) for c in row]
        valid = [(p, t) for p, t in traces if fmt.parse(t).valid]
        keep = valid if len(valid) * 4 >= len(traces) else traces
        docs = [backend.template.render([*fmt.messages(p.question), {"role": "assistant", "content": t}],
                                        add_generation_prompt=False) for p, t in keep]
    finally:
        backend.close()
    with atomic_output(out) as tmp:
        tmp.write_text("".join(docs), encoding="utf-8")
    return Calibration(out, len(chosen), len(traces), len(valid), time.perf_counter() - t0)


def compute_imatrix(gguf: Path, text: Path, out: Path, log: Path, threads: int | None = None) -> None:
    """llama-imatrix over the calibration text (special tokens parsed: the chat markup is real tokens)."""
    n_tokens = text.stat().st_size // 3  # a rough count; llama-imatrix needs at least two chunks
    if n_tokens < 2 * CONTEXT:
        raise ExportError(f"calibration text {text} is too short for an importance matrix ({n_tokens} tokens)")
    with atomic_output(out) as tmp:
        run_tool([str(native_tool("llama-imatrix")), "-m", str(gguf), "-f", str(text), "-o", str(tmp),
                  "-c", str(CONTEXT), "--parse-special", "--no-ppl", "-t", str(threads or os.cpu_count() or 1)],
                 log, f"llama-imatrix on {gguf.name}")
