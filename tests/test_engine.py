"""The reasoning engine's own logic on the deterministic scripted backend: format retries, voting and
early stop, the bounded queue, deadlines, cancellation and concurrency. No model; every assertion is
on what the engine or the backend recorded, never on elapsed time."""

import asyncio
import itertools
import threading

import pytest

from edgereason.backends.base import SamplingParams
from edgereason.backends.scripted import ScriptedBackend
from edgereason.formats import get_format
from edgereason.serve.config import EngineLimits
from edgereason.serve.engine import QueueFullError, ReasoningEngine

FMT = get_format()
VALID = "2 + 2 = 4.\n</reasoning>\n<answer>\n4\n</answer>"  # what follows the prefill
INVALID = "2 + 2 is four, the end"
WORDS = "one two three four"  # no stop string: with ignore_eos it runs to max_tokens


def engine(script, limits=None, **kw) -> ReasoningEngine:
    return ReasoningEngine(ScriptedBackend(script, **kw), FMT, limits or EngineLimits())


def scripted(e: ReasoningEngine) -> ScriptedBackend:
    """The scripted backend behind `e`, whose record of calls the tests read."""
    assert isinstance(e.backend, ScriptedBackend)
    return e.backend


async def _all_finished(e: ReasoningEngine) -> None:
    """Wait until every generation thread the backend started has returned."""
    for _ in range(500):
        if all(c.finished is not None for c in scripted(e).calls):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a generation never stopped")


def params(e: ReasoningEngine, **kw) -> SamplingParams:
    return e.params(True, kw.pop("max_tokens", 64), kw.pop("temperature", 0.7), 1.0, kw.pop("seed", 5), [], **kw)


async def test_invalid_format_is_retried_with_a_new_seed_and_all_tokens_count():
    e = engine(lambda prompt, seed: VALID if seed >= 1000 else INVALID, EngineLimits(format_retries=1))
    (a,) = await e.complete("q", params(e), 1, validate=True)
    assert a.parsed.valid and a.attempts == 2 and a.content == "4"
    assert [c.params.seed for c in scripted(e).calls] == [5, 1005]
    assert a.tokens_spent == len(INVALID.split()) + len(VALID.split())  # the failed attempt counts too
    assert e.counters["format_retries"] == 1

    e = engine(lambda prompt, seed: INVALID, EngineLimits(format_retries=0))
    (a,) = await e.complete("q", params(e), 1, validate=True)
    assert not a.parsed.valid and a.attempts == 1 and e.counters["invalid"] == 1


async def test_n_samples_get_their_own_seeds():
    e = engine(lambda prompt, seed: VALID)
    answers = await e.complete("q", params(e, seed=10), 3, validate=True)
    assert len(answers) == 3 and sorted(c.params.seed or -1 for c in scripted(e).calls) == [10, 11, 12]


async def test_vote_groups_equivalent_answers_and_stops_early_once_decided():
    texts = {0: "4", 1: "4.0", 2: "5", 3: "4", 4: "4", 5: "4", 6: "4", 7: "4"}
    e = engine(lambda prompt, seed: f"r\n</reasoning>\n<answer>\n{texts[seed % 8]}\n</answer>", token_delay_s=0.01)
    voted = await e.vote("q", params(e, seed=0), 8, early_stop=True)
    # 4, 4.0, 5, 4, 4, 4: after six samples "4" leads 5 to 1 with 2 left, so the vote is decided.
    assert voted.early_stopped and len(voted.samples) == 6
    assert voted.vote.answer == "4" and voted.vote.groups[0].count == 5 and voted.vote.share == pytest.approx(5 / 6)
    await _all_finished(e)
    finished = [c for c in scripted(e).calls if not c.cancelled]
    assert len(finished) == 6  # the last two samples never ran to completion
    assert all(c.cancelled for c in scripted(e).calls[6:]) and len(scripted(e).calls) <= 7
    assert e.counters["early_stops"] == 1

    e = engine(lambda prompt, seed: f"r\n</reasoning>\n<answer>\n{texts[seed % 8]}\n</answer>")
    voted = await e.vote("q", params(e, seed=0), 8, early_stop=False)
    assert not voted.early_stopped and len(voted.samples) == 8 and voted.vote.groups[0].count == 7


async def test_invalid_samples_do_not_vote():
    e = engine(lambda prompt, seed: INVALID if seed % 2 else VALID)
    voted = await e.vote("q", params(e, seed=0), 4, early_stop=False)
    assert len(voted.vote.invalid) == 2 and voted.vote.answer == "4" and voted.vote.share == 1.0


async def test_queue_beyond_the_limit_is_refused_and_waiting_requests_run_later():
    e = engine(lambda p, s: WORDS, EngineLimits(max_queue=1), token_delay_s=0.01, max_concurrency=1)
    p = params(e, ignore_eos=True, max_tokens=40)
    first = asyncio.ensure_future(e.complete("a", p, 1, validate=False))
    while e.in_flight == 0:
        await asyncio.sleep(0.001)
    second = asyncio.ensure_future(e.complete("b", p, 1, validate=False))
    while e.waiting == 0:
        await asyncio.sleep(0.001)
    with pytest.raises(QueueFullError):
        await e.complete("c", p, 1, validate=False)
    await first
    await second
    assert [c.prompt.split(":")[-1].strip()[:1] for c in scripted(e).calls][:2] == ["a", "b"]
    assert scripted(e).peak_concurrency == 1


async def test_requests_run_concurrently_up_to_the_backends_capacity():
    # The first four generations wait for one another inside the engine's worker threads: they are in
    # progress at once by construction, however busy the machine (a barrier, not a race against time).
    gate, started = threading.Barrier(4, timeout=60), itertools.count()

    def script(prompt: str, seed: int) -> str:
        if next(started) < 4:
            gate.wait()  # BrokenBarrierError after 60 s: fewer than four ran at once
        return WORDS

    e = engine(script, token_delay_s=0.005, max_concurrency=4)
    p = params(e, ignore_eos=True, max_tokens=30)
    await asyncio.gather(*(e.complete(str(i), p, 1, validate=False) for i in range(8)))
    assert scripted(e).peak_concurrency == 4 and e.peak_in_flight == 4


async def test_deadline_stops_the_generation_itself():
    e = engine(lambda p, s: WORDS, EngineLimits(timeout_s=0.2), token_delay_s=0.01)
    with pytest.raises(TimeoutError):
        await e.complete("q", params(e, ignore_eos=True, max_tokens=10_000), 1, validate=False)
    await _all_finished(e)  # the worker thread notices the deadline at its next token
    call = scripted(e).calls[0]
    assert call.cancelled and call.finished is not None
    (a,) = await e.complete("q", params(e, max_tokens=4), 1, validate=False)  # the engine is free again
    assert a.completion.completion_tokens == 4


async def test_a_stream_holds_a_slot_and_stops_when_its_reader_leaves():
    e = engine(lambda p, s: WORDS, EngineLimits(max_queue=0), token_delay_s=0.005)
    stream = e.stream("q", params(e, ignore_eos=True, max_tokens=500))
    first = await stream.__anext__()
    assert first.text and e.in_flight == 1
    with pytest.raises(QueueFullError):  # streams count against the same queue
        await e.complete("other", params(e), 1, validate=False)
    await stream.aclose()  # the reader left
    await _all_finished(e)
    assert scripted(e).calls[0].cancelled and e.in_flight == 0


async def test_cancelling_a_request_cancels_its_generation():
    e = engine(lambda p, s: WORDS, token_delay_s=0.005)
    task = asyncio.ensure_future(e.complete("q", params(e, ignore_eos=True, max_tokens=5000), 1, validate=False))
    while not scripted(e).calls:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _all_finished(e)
    assert scripted(e).calls[0].cancelled


async def test_prompt_too_long_and_max_tokens_capped():
    from edgereason.serve.engine import PromptTooLongError

    e = engine(lambda p, s: VALID, context_length=50)
    with pytest.raises(PromptTooLongError):
        await e.check_prompt("word " * 60, params(e))
    p = params(e, max_tokens=1000)
    n, capped = await e.check_prompt(" ".join(["word"] * 20), p)
    assert n == 20 and capped.max_tokens == 30 and p.max_tokens == 1000  # a copy: the caller's settings stay


async def test_a_completion_cut_by_max_tokens_is_not_retried_and_a_greedy_retry_samples():
    # Cut by the token budget: a retry would be cut by the same budget, so it comes back as it is.
    e = engine(lambda prompt, seed: VALID, EngineLimits(format_retries=2))
    (a,) = await e.complete("q", params(e, max_tokens=3), 1, validate=True)
    assert not a.parsed.valid and a.completion.finish_reason == "length" and a.attempts == 1
    assert len(scripted(e).calls) == 1 and e.counters["format_retries"] == 0 and e.counters["invalid"] == 1
    # Ended by itself but invalid, asked greedily: the retry samples (greedy would repeat the text).
    e = engine(lambda prompt, seed: VALID if seed >= 1000 else INVALID, EngineLimits(format_retries=1))
    (a,) = await e.complete("q", params(e, temperature=0.0), 1, validate=True)
    assert a.parsed.valid and a.attempts == 2
    assert [c.params.temperature for c in scripted(e).calls] == [0.0, 0.7]


LOOP = "so p is true, " * 40  # a reasoning that never ends by itself


def looping(prompt: str, seed: int) -> str:
    return "yes\n</answer>" if prompt.endswith("<answer>\n") else LOOP


async def test_a_cut_reasoning_gets_a_forced_answer_in_its_own_slot_and_a_vote_counts_it():
    """force_answer: the reasoning gets max_tokens less the answer's share; the engine continues a
    sample cut there from the closed reasoning, with the answer's share and no grammar; each of a
    vote's cut samples casts a ballot; a stream sends exactly the text the completion ends with; the
    context keeps room for the answer's tags."""
    e = engine(looping, EngineLimits(format_retries=1))
    (a,) = await e.complete("q", params(e, max_tokens=10, force_answer=6), 1, validate=True)
    assert a.parsed.valid and a.content == "yes" and a.attempts == 1
    assert a.completion.forced_answer_tokens == 2 and a.completion.completion_tokens == 4 + 2
    first, cont = scripted(e).calls[-2:]
    assert first.params.max_tokens == 10 - 6 and cont.prompt == "q" + "so p is true," + "\n</reasoning>\n<answer>\n"
    assert cont.params.max_tokens == 6 and cont.params.grammar is None and e.counters["forced_answers"] == 1

    voted = await e.vote("q", params(e, max_tokens=10, force_answer=6), 3, early_stop=False)
    assert voted.vote.answer == "yes" and all(s.completion.forced_answer_tokens == 2 for s in voted.samples)
    assert e.counters["forced_answers"] == 4

    streamed = [d async for d in e.stream("q", params(e, max_tokens=10, force_answer=6))]
    final = streamed[-1].completion
    assert final is not None and final.forced_answer_tokens == 2 and e.counters["forced_answers"] == 5
    assert "".join(d.text for d in streamed) == final.text and streamed[-1].finish_reason == "stop"

    (cut,) = await e.complete("q", params(e, max_tokens=10), 1, validate=True)  # off: the cut stays
    assert cut.completion.finish_reason == "length" and cut.completion.forced_answer_tokens is None

    from edgereason.serve.engine import FORCED_TAG_TOKENS, PromptTooLongError

    small = engine(looping, context_length=50)
    n, capped = await small.check_prompt(" ".join(["word"] * 20), params(small, max_tokens=1000, force_answer=6))
    assert capped.max_tokens == 50 - 20 - FORCED_TAG_TOKENS  # the answer's 6 are part of it
    with pytest.raises(PromptTooLongError, match="forced answer"):
        await small.check_prompt("word " * 40, params(small, force_answer=6))
    with pytest.raises(ValueError, match="smaller than max_tokens"):  # the server's default leaves no room to reason
        EngineLimits(max_tokens=64, force_answer=64)


async def test_a_completion_that_stops_inside_its_reasoning_is_forced_unless_the_caller_chose_the_stop():
    """The model ends by itself with its reasoning open ("So the answer is D.") and no answer block:
    forced like a cut one. Stopped at a stop string the caller chose: left as the caller asked."""
    def ends_early(prompt: str, seed: int) -> str:
        return "D\n</answer>" if prompt.endswith("<answer>\n") else "So the correct answer is D) lead apron."

    e = engine(ends_early)
    (a,) = await e.complete("q", params(e, max_tokens=64, force_answer=8), 1, validate=True)
    assert a.completion.forced_answer_tokens == 2 and a.parsed.valid and a.content == "D"
    # constrained (as on a grammar engine): the first pass may end in its reasoning, the answer keeps to one line
    whole = FMT.grammar(after_prefill=True)
    (a,) = await e.complete("q", params(e, max_tokens=64, force_answer=8, grammar=whole), 1, validate=True)
    first, cont = scripted(e).calls[-2:]
    assert first.params.grammar == FMT.grammar(after_prefill=True, answer_optional=True) != whole
    assert cont.params.grammar == FMT.answer_grammar() and a.completion.forced_answer_tokens == 2
    e = engine(lambda prompt, seed: "So the answer is D. Next question" if not prompt.endswith("<answer>\n") else "D")
    (a,) = await e.complete("q", e.params(True, 64, 0.0, 1.0, 5, ["Next"], force_answer=8), 1, validate=True)
    assert a.completion.forced_answer_tokens is None and not a.parsed.valid and e.counters["forced_answers"] == 0
