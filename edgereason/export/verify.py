"""Check that an exported artifact answers like its source model.

The reference is the merged HF model in float32. For every artifact we measure, on fixed inputs:
- `top1_agreement`: teacher-forced, the share of positions where the artifact's top token is the
  reference's, over the reference's 32-token greedy continuations of a few reasoning prompts and
  its whole greedy answers to the answer-check problems (1,200-2,000 tokens with the default 24 on
  SmolLM2, so a 0.01 difference is more than noise; the four prompts alone gave 128 tokens);
- `top1_confident`: the same agreement where the reference's top token leads its second by at least
  `CONFIDENT_MARGIN` logits. A small model's reasoning text is full of near-ties (on the pipeline
  adapter 18% of positions are within 1 logit) that any requantization flips at random, so this
  figure separates real damage from those coin flips; `near_tie_share` is the share left out;
- `greedy_prefix_match`: free-running, how many of the first 32 greedy tokens equal the reference's
  before the first difference (mean share over prompts);
- `perplexity` on a held-out text and `mean_kl` = mean KL(reference ‖ artifact) per token, the
  figures llama.cpp's `llama-perplexity --kl-divergence` reports for quantization quality.
Both models read the same token ids, so tokenizer drift cannot hide in the numbers; whether the
GGUF's own tokenizer agrees with the HF one is checked separately (`tokenizer_match`).
- `answers`: the answer-level check (edgereason.export.answers): greedy answers to training
  problems compared with the merged model's;
- `accuracy` (when the reference has accuracy problems): correct answers on held-out problems paired
  with the merged model's (accuracies, drop in points, discordant counts, exact McNemar p).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgereason.cpu import default_threads
from edgereason.export.answers import AnswerSheet
from edgereason.formats import get_format
from edgereason.problems import Problem
from edgereason.results import Verification

GREEDY_TOKENS = 32
#: Positions where the reference's top two logits are closer than this are near-ties (see top1_confident).
CONFIDENT_MARGIN = 1.0
VERIFY_QUESTIONS = (
    "A baker makes 24 muffins and sells 15 of them. How many muffins are left?",
    "Tom has 3 boxes with 12 pencils each. He gives away 10 pencils. How many pencils does he keep?",
    "What is 15% of 80?",
    "If x + 7 = 19, what is x?",
)
# Held-out text for perplexity/KL: written for this check, not taken from any training or test set.
HELDOUT_TEXT = (
    "A train leaves the station at nine in the morning and travels at sixty kilometres per hour. "
    "A second train leaves the same station one hour later and travels at eighty kilometres per hour "
    "along the same track. To find when the second train catches up, note that the first train has a "
    "head start of sixty kilometres. The second train gains twenty kilometres every hour, so it needs "
    "sixty divided by twenty, which is three hours, to close the gap. It therefore catches up at one "
    "o'clock in the afternoon, when both trains are two hundred and forty kilometres from the station.\n\n"
    "Fractions work the same way in every problem. To add one third and one quarter, write both with the "
    "common denominator twelve: four twelfths plus three twelfths is seven twelfths. To check an answer, "
    "substitute it back into the original question and see whether every condition holds. A careful "
    "student writes each step on its own line, states the units, and only then gives the final answer."
)


@dataclass
class Thresholds:
    """Pass marks for an artifact (looser for fewer bits; 135M models are sensitive to rounding)."""

    min_top1_agreement: float = 0.80
    max_mean_kl: float = 0.5


def thresholds_for(quant: str) -> Thresholds:
    q = quant.lower()
    if q in ("f32", "f16", "bf16", "hf", "q8_0"):
        return Thresholds(0.90, 0.1)
    if q.startswith(("q6", "q5")):
        return Thresholds(0.85, 0.25)
    return Thresholds(0.75, 0.6)


def _margins(logits: Any) -> np.ndarray:
    """Per position, the reference's top logit minus its second (a tensor of rows of logits)."""
    top2 = logits.float().topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]).numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Reference:
    """Reference outputs of the merged HF model, computed once and compared with every artifact."""

    def __init__(self, model: Any, tokenizer: Any, format_name: str | None = None,
                 answer_problems: list[Problem] | None = None, accuracy_problems: list[Problem] | None = None) -> None:
        import torch

        from edgereason.backends.transformers import TransformersBackend

        fmt = get_format(format_name)
        self.format = fmt
        self.answer_problems = answer_problems or []
        backend = TransformersBackend.from_model(model, tokenizer, "merged")  # renders every prompt below
        self.answers = AnswerSheet.answer(backend, self.answer_problems, fmt) if self.answer_problems else None
        self.accuracy_problems = accuracy_problems or []
        self.accuracy = AnswerSheet.answer(backend, self.accuracy_problems, fmt) if self.accuracy_problems else None
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template
        self.prompts: list[list[int]] = []
        self.continuations: list[list[int]] = []
        # teacher-forced sequences: (token ids, first scored position, the reference's top token at each,
        # and its margin over the second)
        self.sequences: list[tuple[list[int], int, np.ndarray, np.ndarray]] = []
        for q in VERIFY_QUESTIONS:
            ids = tokenizer(backend.render(fmt.messages(q), fmt.prefill), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                )
            self.prompts.append(ids)
            self.continuations.append(out[0, len(ids):].tolist())
            full = ids + self.continuations[-1]
            with torch.no_grad():
                margins = _margins(model(torch.tensor([full])).logits[0, len(ids) - 1 : len(full) - 1])
            self.sequences.append((full, len(ids), np.asarray(self.continuations[-1]), margins))
        for problem, text in zip(self.answer_problems, self.answers.texts if self.answers else []):
            prompt = backend.render(fmt.messages(problem.question))  # `text` starts with the prefill
            start = len(tokenizer(prompt + fmt.prefill, add_special_tokens=False)["input_ids"])
            ids = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
            if len(ids) <= start:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, start - 1 : len(ids) - 1]
            self.sequences.append((ids, start, logits.argmax(dim=-1).numpy(), _margins(logits)))
        self.text_ids = tokenizer(HELDOUT_TEXT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([self.text_ids])).logits[0].float().numpy()
        self.text_logprobs = _log_softmax(logits[:-1])
        self.perplexity = _perplexity(self.text_logprobs, self.text_ids)
        self.sample_answer = tokenizer.decode(self.continuations[0], skip_special_tokens=True)

    @property
    def max_tokens(self) -> int:
        """The longest input an artifact is given (its context must hold it)."""
        return max([len(self.text_ids)] + [len(ids) for ids, _, _, _ in self.sequences]
                   + [len(p) + GREEDY_TOKENS for p in self.prompts])


def _perplexity(logprobs: np.ndarray, ids: list[int]) -> float:
    nll = -logprobs[np.arange(len(ids) - 1), ids[1:]]
    return float(math.exp(nll.mean()))


@dataclass
class _Measured:
    top1: float
    top1_confident: float
    near_ties: float
    prefix: float
    perplexity: float
    kl: float
    sample: str


def _measure(ref: Reference, logits_of: Callable[[list[int]], np.ndarray], greedy: Callable[[list[int], int], list[int]],
             detokenize: Callable[[list[int]], str]) -> _Measured:
    """The token-level figures of one engine: `logits_of(ids)` gives a row of logits per position,
    `greedy(prompt, n)` up to n greedy tokens (stopping at EOS)."""
    agree = total = agree_confident = confident = 0
    for ids, start, ref_top, margin in ref.sequences:
        same = logits_of(ids)[start - 1 : len(ids) - 1].argmax(axis=-1) == ref_top
        sure = margin >= CONFIDENT_MARGIN
        agree += int(same.sum())
        total += len(ref_top)
        agree_confident += int(same[sure].sum())
        confident += int(sure.sum())
    prefix_shares: list[float] = []
    sample = ""
    for prompt, cont in zip(ref.prompts, ref.continuations):
        generated = greedy(prompt, len(cont))
        if not prefix_shares:
            sample = detokenize(generated)
        match = next((i for i, (a, b) in enumerate(zip(generated, cont)) if a != b), min(len(generated), len(cont)))
        prefix_shares.append(match / max(1, len(cont)))
    logprobs = _log_softmax(logits_of(ref.text_ids)[: len(ref.text_ids) - 1])
    kl = float((np.exp(ref.text_logprobs) * (ref.text_logprobs - logprobs)).sum(axis=-1).mean())
    return _Measured(agree / max(1, total), agree_confident / max(1, confident), 1 - confident / max(1, total),
                     float(np.mean(prefix_shares)), _perplexity(logprobs, ref.text_ids), kl, sample)


class _Checks(NamedTuple):
    answers: dict[str, float] | None = None
    accuracy: dict[str, float] | None = None


def _answers(ref: Reference, make_backend: Callable[[], Any]) -> _Checks:
    """The answer-level check and the accuracy check of one artifact, on one backend."""
    if ref.answers is None and ref.accuracy is None:
        return _Checks()
    backend = make_backend()
    try:
        return _Checks(
            AnswerSheet.answer(backend, ref.answer_problems, ref.format).compare(ref.answers)
            if ref.answers is not None else None,
            AnswerSheet.answer(backend, ref.accuracy_problems, ref.format).paired(ref.accuracy)
            if ref.accuracy is not None else None)
    finally:
        backend.close()


def verify_gguf(
    path: Path, ref: Reference, quant: str, threads: int | None = None, lora_path: Path | None = None,
    expected_template: str | None = None,
) -> Verification:
    """Load a GGUF (optionally with a GGUF LoRA on top) with llama.cpp and compare it with the reference.
    Its chat template must be `expected_template` (the export's, reasoning setup included) or else the
    HF tokenizer's."""
    from llama_cpp import Llama

    n_ctx = ref.max_tokens + 16
    llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=threads,
                lora_path=str(lora_path) if lora_path else None, verbose=False)

    def logits_of(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)])

    def greedy(prompt: list[int], n: int) -> list[int]:
        llm.reset()
        out: list[int] = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if tok == llm.token_eos() or len(out) >= n:
                break
            out.append(tok)
        return out

    try:
        m = _measure(ref, logits_of, greedy, lambda ids: llm.detokenize(ids).decode(errors="replace"))
        gguf_ids = llm.tokenize(HELDOUT_TEXT.encode(), add_bos=False, special=False)
        template = llm.metadata.get("tokenizer.chat_template")
    finally:
        llm.close()

    def backend() -> Any:
        from edgereason.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(str(path), n_ctx=1024, threads=threads, lora_path=lora_path)

    expected = expected_template or ref.chat_template
    return _judge(quant, m, ref, tokenizer_match=list(gguf_ids) == list(ref.text_ids),
                  chat_template_match=(template == expected) if expected else None,
                  checks=_answers(ref, backend))


def verify_hf(model: Any, ref: Reference, quant: str) -> Verification:
    """Compare a transformers model (e.g. a bitsandbytes INT4 checkpoint) with the reference."""
    import torch

    def logits_of(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    def greedy(prompt: list[int], n: int) -> list[int]:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False, pad_token_id=ref.tokenizer.eos_token_id)
        return [t for t in out[0, len(prompt):].tolist() if t != ref.tokenizer.eos_token_id]

    def backend() -> Any:
        from edgereason.backends.transformers import TransformersBackend

        return TransformersBackend.from_model(model, ref.tokenizer, quant)

    m = _measure(ref, logits_of, greedy, lambda ids: ref.tokenizer.decode(ids, skip_special_tokens=True))
    return _judge(quant, m, ref, tokenizer_match=None, chat_template_match=None, checks=_answers(ref, backend))


def verify_openvino(folder: Path, ref: Reference, quant: str, threads: int | None = None) -> Verification:
    """Compare an OpenVINO IR folder (`export openvino`) with the reference: logits from the
    OpenVINO runtime (the stateful model, teacher-forced), greedy tokens and answers from
    openvino-genai, its own tokenizer and chat template checked against the HF ones."""
    import openvino as ov
    import openvino_genai as ov_genai

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(folder / "openvino_model.xml")), "CPU",
                                  {"INFERENCE_NUM_THREADS": default_threads(threads)})
    request = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}

    def logits_of(ids: list[int]) -> np.ndarray:
        request.reset_state()
        feed: dict[str, np.ndarray] = {"input_ids": np.array([ids], dtype=np.int64),
                                       "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        if "position_ids" in names:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        if "beam_idx" in names:
            feed["beam_idx"] = np.zeros(1, dtype=np.int32)
        request.infer(feed)
        return np.asarray(request.get_tensor("logits").data[0], dtype=np.float32).copy()

    pipe = ov_genai.LLMPipeline(str(folder), "CPU", INFERENCE_NUM_THREADS=default_threads(threads))
    tokenizer = pipe.get_tokenizer()

    def greedy(prompt: list[int], n: int) -> list[int]:
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens = n
        cfg.apply_chat_template = False
        result = pipe.generate(ov.Tensor(np.array([prompt], dtype=np.int64)), cfg)
        return [int(t) for t in result.tokens[0] if t != ref.tokenizer.eos_token_id]

    def backend() -> Any:
        from edgereason.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(str(folder), threads=threads)

    m = _measure(ref, logits_of, greedy, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    ov_ids = tokenizer.encode([HELDOUT_TEXT], add_special_tokens=False).input_ids.data[0].tolist()
    config = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").is_file() else {}
    template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() \
        else config.get("chat_template")
    return _judge(quant, m, ref, tokenizer_match=ov_ids == list(ref.text_ids),
                  chat_template_match=(template == ref.chat_template) if ref.chat_template else None,
                  checks=_answers(ref, backend))


def _judge(quant: str, m: _Measured, ref: Reference, *, tokenizer_match: bool | None,
           chat_template_match: bool | None, checks: _Checks = _Checks()) -> Verification:
    th = thresholds_for(quant)
    problems = []
    if m.top1 < th.min_top1_agreement:
        problems.append(f"top-1 agreement {m.top1:.3f} < {th.min_top1_agreement}")
    if not math.isfinite(m.kl) or m.kl > th.max_mean_kl:
        problems.append(f"mean KL {m.kl:.4f} > {th.max_mean_kl}")
    if tokenizer_match is False:
        problems.append("the artifact's tokenizer splits text differently from the HF tokenizer")
    if chat_template_match is False:
        problems.append("the chat template did not survive conversion")
    return Verification(
        passed=not problems, top1_agreement=round(m.top1, 4), top1_confident=round(m.top1_confident, 4),
        near_tie_share=round(m.near_ties, 4), greedy_prefix_match=round(m.prefix, 4),
        perplexity=round(m.perplexity, 4), reference_perplexity=round(ref.perplexity, 4), mean_kl=round(m.kl, 5),
        tokenizer_match=tokenizer_match, chat_template_match=chat_template_match, sample_answer=m.sample,
        thresholds=asdict(th), problems=problems, answers=checks.answers,
        accuracy=checks.accuracy,
    )
