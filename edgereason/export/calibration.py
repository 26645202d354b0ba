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

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgereason.backends.base import Backend, SamplingParams
from edgereason.backends.chat_template import ChatTemplate
from edgereason.cpu import default_threads
from edgereason.export.answers import training_problems
from edgereason.export.files import ExportError, atomic_output, sha256_file
from edgereason.export.llama_tools import native_tool, run_tool
from edgereason.formats import ReasoningFormat

CONTEXT = 512  # tokens per imatrix chunk: a few answers each
TEMPERATURE = 0.7  # sampled, so the traces cover what the model says, not only its single greedy path


@dataclass
class Calibration:
    file: Path  # JSONL, one {"text": ...} per trace: a whole served conversation
    problems: int
    traces: int
    valid_traces: int
    seconds: float

    def texts(self) -> list[str]:
        return [json.loads(line)["text"] for line in self.file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def to_dict(self) -> dict[str, object]:
        return {"problems": self.problems, "traces": self.traces, "valid_traces": self.valid_traces,
                "sha256": sha256_file(self.file), "seconds": round(self.seconds, 1)}


def calibration_traces(backend: Backend, template: ChatTemplate, fmt: ReasoningFormat, out: Path, problems: int,
                       sets: Sequence[str], samples: int = 2) -> Calibration:
    """The model's own answers to `problems` training problems (`samples` each, sampled by
    `backend`), each rendered by `template` as a whole served conversation, written to `out`.
    Format-valid answers are kept; if fewer than a quarter are valid (an untrained base), all are
    kept: they are still the model's own distribution."""
    t0 = time.perf_counter()
    chosen = training_problems(problems, sets, seed=1)  # seed 1: not the answer check's problems
    params = SamplingParams(max_tokens=256, temperature=TEMPERATURE, n=samples, seed=0,
                            stop=fmt.stop_sequences(), prefix=fmt.prefill)
    rows = backend.chat([fmt.messages(p.question) for p in chosen], params)
    traces = [(p, c.text) for p, row in zip(chosen, rows) for c in row]
    valid = [(p, t) for p, t in traces if fmt.parse(t).valid]
    keep = valid if len(valid) * 4 >= len(traces) else traces
    docs = [template.render([*fmt.messages(p.question), {"role": "assistant", "content": t}], add_generation_prompt=False)
            for p, t in keep]
    with atomic_output(out) as tmp:
        tmp.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return Calibration(out, len(chosen), len(traces), len(valid), time.perf_counter() - t0)


def compute_imatrix(gguf: Path, calibration: Calibration, out: Path, log: Path, threads: int | None = None) -> None:
    """llama-imatrix over the calibration traces (special tokens parsed: the chat markup is real tokens)."""
    text = out.parent / "logs" / "calibration.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("".join(calibration.texts()), encoding="utf-8")
    n_tokens = text.stat().st_size // 3  # a rough count; llama-imatrix needs at least two chunks
    if n_tokens < 2 * CONTEXT:
        raise ExportError(f"calibration text {text} is too short for an importance matrix ({n_tokens} tokens)")
    with atomic_output(out) as tmp:
        run_tool([str(native_tool("llama-imatrix")), "-m", str(gguf), "-f", str(text), "-o", str(tmp),
                  "-c", str(CONTEXT), "--parse-special", "--no-ppl", "-t", str(default_threads(threads))],
                 log, f"llama-imatrix on {gguf.name}")
