"""Check that an exported artifact answers like its source model.

The reference is the merged HF model in float32. For every artifact we measure, on fixed inputs:
- `top1_agreement`: teacher-forced on the reference's 32-token greedy continuations of a few
  reasoning prompts, the share of positions where the artifact's top token is the reference's;
- `greedy_prefix_match`: free-running, how many of the first 32 greedy tokens equal the reference's
  before the first difference (mean share over prompts);
- `perplexity` on a held-out text and `mean_kl` = mean KL(reference ‖ artifact) per token, the
  figures llama.cpp's `llama-perplexity --kl-divergence` reports for quantization quality.
Both models read the same token ids, so tokenizer drift cannot hide in the numbers; whether the
GGUF's own tokenizer agrees with the HF one is checked separately (`tokenizer_match`).
- `answers`: the answer-level check (edgereason.export.answers): greedy answers to training
  problems compared with the merged model's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgereason.export.answers import AnswerSheet
from edgereason.formats import get_format
from edgereason.problems import Problem
from edgereason.results import Verification

GREEDY_TOKENS = 32
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


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Reference:
    """Reference outputs of the merged HF model, computed once and compared with every artifact."""

    def __init__(self, model, tokenizer, format_name: str | None = None,
                 answer_problems: list[Problem] | None = None) -> None:
        import torch

        from edgereason.backends.transformers import TransformersBackend

        fmt = get_format(format_name)
        self.format = fmt
        self.answer_problems = answer_problems or []
        self.answers = (AnswerSheet.answer(TransformersBackend.from_model(model, tokenizer, "merged"),
                                           self.answer_problems, fmt) if self.answer_problems else None)
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template
        self.prompts: list[list[int]] = []
        self.continuations: list[list[int]] = []
        for q in VERIFY_QUESTIONS:
            text = tokenizer.apply_chat_template(fmt.messages(q), add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text + fmt.prefill, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id,
                )
            self.prompts.append(ids)
            self.continuations.append(out[0, len(ids):].tolist())
        self.text_ids = tokenizer(HELDOUT_TEXT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([self.text_ids])).logits[0].float().numpy()
        self.text_logprobs = _log_softmax(logits[:-1])
        self.perplexity = _perplexity(self.text_logprobs, self.text_ids)
        self.sample_answer = tokenizer.decode(self.continuations[0], skip_special_tokens=True)


def _perplexity(logprobs: np.ndarray, ids: list[int]) -> float:
    nll = -logprobs[np.arange(len(ids) - 1), ids[1:]]
    return float(math.exp(nll.mean()))


def verify_gguf(
    path: Path, ref: Reference, quant: str, threads: int | None = None, lora_path: Path | None = None
) -> Verification:
    """Load a GGUF (optionally with a GGUF LoRA on top) with llama.cpp and compare it with the reference."""
    from llama_cpp import Llama

    n_ctx = max(len(ref.text_ids), max(len(p) + GREEDY_TOKENS for p in ref.prompts)) + 16
    llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=threads,
                lora_path=str(lora_path) if lora_path else None, verbose=False)
    try:
        agree = total = 0
        prefix_shares: list[float] = []
        for prompt, cont in zip(ref.prompts, ref.continuations):
            llm.reset()
            llm.eval(prompt + cont)
            scores = np.asarray(llm.scores[: len(prompt) + len(cont)])
            top = scores[len(prompt) - 1 : len(prompt) + len(cont) - 1].argmax(axis=-1)
            agree += int((top == np.asarray(cont)).sum())
            total += len(cont)
            generated = _greedy(llm, prompt, len(cont))
            if not prefix_shares:
                sample = llm.detokenize(generated).decode(errors="replace")
            match = next((i for i, (a, b) in enumerate(zip(generated, cont)) if a != b), min(len(generated), len(cont)))
            prefix_shares.append(match / max(1, len(cont)))
        llm.reset()
        llm.eval(ref.text_ids)
        logprobs = _log_softmax(np.asarray(llm.scores[: len(ref.text_ids) - 1]))
        ppl = _perplexity(logprobs, ref.text_ids)
        kl = float((np.exp(ref.text_logprobs) * (ref.text_logprobs - logprobs)).sum(axis=-1).mean())
        gguf_ids = llm.tokenize(HELDOUT_TEXT.encode(), add_bos=False, special=False)
        template = llm.metadata.get("tokenizer.chat_template")
    finally:
        llm.close()
    answers = None
    if ref.answers is not None:
        from edgereason.backends.llamacpp import LlamaCppBackend

        backend = LlamaCppBackend(str(path), n_ctx=1024, threads=threads, lora_path=lora_path)
        try:
            answers = AnswerSheet.answer(backend, ref.answer_problems, ref.format).compare(ref.answers)
        finally:
            backend.close()
    return _judge(
        quant, agree / max(1, total), float(np.mean(prefix_shares)), ppl, ref.perplexity, kl,
        tokenizer_match=list(gguf_ids) == list(ref.text_ids),
        chat_template_match=(template == ref.chat_template) if ref.chat_template else None,
        sample=sample, answers=answers,
    )


def _greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if tok == llm.token_eos() or len(out) >= n:
            break
        out.append(tok)
    return out


def verify_hf(model, ref: Reference, quant: str) -> Verification:
    """Compare a transformers model (e.g. a bitsandbytes INT4 checkpoint) with the reference."""
    import torch

    agree = total = 0
    prefix_shares = []
    with torch.no_grad():
        for prompt, cont in zip(ref.prompts, ref.continuations):
            ids = torch.tensor([prompt + cont])
            logits = model(ids).logits[0].float()
            top = logits[len(prompt) - 1 : len(prompt) + len(cont) - 1].argmax(-1).tolist()
            agree += sum(int(a == b) for a, b in zip(top, cont))
            total += len(cont)
            out = model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=len(cont), do_sample=False, pad_token_id=ref.tokenizer.eos_token_id,
            )[0, len(prompt):].tolist()
            match = next((i for i, (a, b) in enumerate(zip(out, cont)) if a != b), min(len(out), len(cont)))
            prefix_shares.append(match / max(1, len(cont)))
            if len(prefix_shares) == 1:
                sample = ref.tokenizer.decode(out, skip_special_tokens=True)
        logprobs = _log_softmax(model(torch.tensor([ref.text_ids])).logits[0, :-1].float().numpy())
    ppl = _perplexity(logprobs, ref.text_ids)
    kl = float((np.exp(ref.text_logprobs) * (ref.text_logprobs - logprobs)).sum(axis=-1).mean())
    answers = None
    if ref.answers is not None:
        from edgereason.backends.transformers import TransformersBackend

        answers = AnswerSheet.answer(TransformersBackend.from_model(model, ref.tokenizer, quant), ref.answer_problems,
                                     ref.format).compare(ref.answers)
    return _judge(quant, agree / max(1, total), float(np.mean(prefix_shares)), ppl, ref.perplexity, kl,
                  tokenizer_match=None, chat_template_match=None, sample=sample, answers=answers)


def _judge(quant: str, top1: float, prefix: float, ppl: float, ref_ppl: float, kl: float, *,
           tokenizer_match: bool | None, chat_template_match: bool | None, sample: str,
           answers: dict[str, float] | None = None) -> Verification:
    th = thresholds_for(quant)
    problems = []
    if top1 < th.min_top1_agreement:
        problems.append(f"top-1 agreement {top1:.3f} < {th.min_top1_agreement}")
    if not math.isfinite(kl) or kl > th.max_mean_kl:
        problems.append(f"mean KL {kl:.4f} > {th.max_mean_kl}")
    if tokenizer_match is False:
        problems.append("the GGUF tokenizer splits text differently from the HF tokenizer")
    if chat_template_match is False:
        problems.append("the chat template did not survive conversion")
    return Verification(
        passed=not problems, top1_agreement=round(top1, 4), greedy_prefix_match=round(prefix, 4),
        perplexity=round(ppl, 4), reference_perplexity=round(ref_ppl, 4), mean_kl=round(kl, 5),
        tokenizer_match=tokenizer_match, chat_template_match=chat_template_match, sample_answer=sample,
        thresholds=asdict(th), problems=problems, answers=answers,
    )
