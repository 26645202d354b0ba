"""Answer forcing: a completion that ends without an answer is given the chance to write one.

A small model that loops ("...so p is true, so p is true, ...") stops only at `max_tokens`, inside
its reasoning, with no answer: out of format and ungraded however close it was; another ends its
reasoning ("So the correct answer is D) lead apron.") and stops without writing the answer. With
`SamplingParams.force_answer` set, the reasoning gets `max_tokens - force_answer` tokens
(`reasoning_params`); when it runs out, or the model stops with no answer block, the runtime closes
the reasoning for it and opens the answer block (`ReasoningFormat.forced_answer_suffix`), and the
model writes the answer alone in the `force_answer` tokens kept for it. A completion so stays within
`max_tokens`, as OpenAI's field promises. This is budget forcing (s1, Muennighoff et al. 2025) on
the runtime side, as vLLM's and llama.cpp's reasoning budgets are.

The tags the runtime wrote are in the completion's text but not in its `completion_tokens`, and
`Completion.forced_answer_tokens` records that it happened, so an eval reports how many answers were
forced beside the format rate they raise, and the server marks the choice. Callers: eval's batches
(`force_answers`) and the serving engine (the pieces: `reasoning_params`, `forcing_suffix`,
`answer_params`, `attach_answer`).
"""

from __future__ import annotations

from dataclasses import replace

from edgereason.backends.base import Backend, Completion, Messages, SamplingParams, restore_closing_tag
from edgereason.formats import ReasoningFormat


def budget_error(force_answer: int, max_tokens: int) -> str | None:
    """Why a forced-answer share leaves the reasoning no tokens, or None when it leaves some (the one
    rule eval's and serve's settings and a request are checked by)."""
    if force_answer and force_answer >= max_tokens:
        return (f"force_answer ({force_answer}) must be smaller than max_tokens ({max_tokens}): it is the part of "
                "max_tokens kept for the answer, the rest being the reasoning's")
    return None


def reasoning_params(params: SamplingParams, fmt: ReasoningFormat) -> SamplingParams:
    """The first pass's settings: `max_tokens` less the tokens kept for a forced answer and, where the
    request is constrained by the format's own grammar, that grammar with the answer made optional.
    Unconstrained, a model that ends its reasoning by itself is given its answer; the whole
    completion's grammar would refuse that end of sequence and make it go on, to the budget."""
    if not params.force_answer:
        return params
    if (why := budget_error(params.force_answer, params.max_tokens)) is not None:
        raise ValueError(why)
    grammar = params.grammar
    for after_prefill in (False, True):
        if grammar is not None and grammar == fmt.grammar(after_prefill):
            grammar = fmt.grammar(after_prefill, answer_optional=True)
            break
    return replace(params, max_tokens=params.max_tokens - params.force_answer, grammar=grammar)


def forcing_suffix(fmt: ReasoningFormat, params: SamplingParams, c: Completion, before: str = "") -> str | None:
    """The text that opens `c`'s forced answer, or None when it gets none: forcing off, its answer
    block already open, or it stopped at a stop string the caller chose (the caller asked it to end
    there). A completion that ended inside its reasoning by itself (end of sequence) is forced like
    one cut by the budget: it too has no answer. `before` is the text the completion continues (the
    prefill, where the engine returns only what it generated)."""
    if not params.force_answer:
        return None
    own_stops = set(params.stop) <= set(fmt.stop_sequences())
    if c.finish_reason != "length" and not (c.finish_reason == "stop" and own_stops):
        return None
    return fmt.forced_answer_suffix(before + c.text)


def answer_params(params: SamplingParams, fmt: ReasoningFormat) -> SamplingParams:
    """The forced answer's settings: the request's sampling, one sample, `force_answer` tokens, and,
    where the request was constrained, the format's answer grammar in place of the whole
    completion's (which does not fit a text that starts at the answer)."""
    grammar = fmt.answer_grammar() if params.grammar is not None else None
    return replace(params, n=1, max_tokens=params.force_answer, grammar=grammar, prefix="", force_answer=0)


def attach_answer(c: Completion, suffix: str, answer: Completion) -> None:
    """Append the forced answer to the completion it ends, in place: text, counts, timing, finish."""
    c.text += suffix + answer.text
    c.completion_tokens += answer.completion_tokens
    c.forced_answer_tokens = answer.completion_tokens
    c.finish_reason = answer.finish_reason
    c.latency_s += answer.latency_s
    if c.logprobs is not None and answer.logprobs is not None:
        c.logprobs.extend(answer.logprobs)


def force_answers(backend: Backend, batch: list[Messages], rows: list[list[Completion]], params: SamplingParams,
                  fmt: ReasoningFormat) -> int:
    """Give every completion in `rows` (from `backend.chat(batch, reasoning_params(params, fmt))`, prefill
    included) that ended without an answer block its forced answer, in place, the continuations
    decoded as one batch; returns how many were forced."""
    cut: list[tuple[Completion, str, str]] = []
    for messages, row in zip(batch, rows, strict=True):
        for c in row:
            if (suffix := forcing_suffix(fmt, params, c)) is not None:
                cut.append((c, suffix, backend.render(messages, c.text + suffix)))
    if not cut:
        return 0
    answers = backend.complete([prompt for *_, prompt in cut], answer_params(params, fmt))
    for (c, suffix, _), (a, *_) in zip(cut, answers, strict=True):
        attach_answer(c, suffix, a)
        c.text = restore_closing_tag(c.text, params.stop, c.finish_reason)
    return len(cut)
