"""k samples of one prompt decoded together on llama.cpp (the maj@k path of the edge backend)."""

import pytest

from edgereason.backends.base import SamplingParams
from edgereason.backends.llamacpp import LlamaCppBackend
from edgereason.formats import get_format

pytestmark = pytest.mark.model

QUESTION = "Sara has 5 pencils and her friend gives her 6 more. How many pencils does Sara have?"


@pytest.fixture(scope="module")
def backend():
    b = LlamaCppBackend("smollm2-135m", n_ctx=1024)
    yield b
    b.close()


def test_parallel_samples_are_independent_reproducible_and_in_format(backend):
    fmt = get_format()
    params = SamplingParams(max_tokens=96, temperature=0.9, n=4, seed=7, stop=fmt.stop_sequences(),
                            prefix=fmt.prefill, grammar=fmt.grammar(after_prefill=True))
    (row,) = backend.chat([fmt.messages(QUESTION)], params)
    assert len(row) == 4
    assert len({c.text for c in row}) >= 2  # different seeds, different samples
    for c in row:
        parsed = fmt.parse(c.text)
        assert parsed.valid or c.finish_reason == "length", c.text
        assert c.completion_tokens <= 96 and c.prompt_tokens > 50
    (again,) = backend.chat([fmt.messages(QUESTION)], params)
    assert [c.text for c in again] == [c.text for c in row]  # same seeds, same samples


def test_greedy_parallel_samples_agree(backend):
    fmt = get_format()
    params = SamplingParams(max_tokens=32, temperature=0.0, n=3, seed=1, stop=fmt.stop_sequences(), prefix=fmt.prefill)
    (row,) = backend.chat([fmt.messages(QUESTION)], params)
    assert len({c.text for c in row}) == 1


def test_several_prompts_are_decoded_together_without_crosstalk(backend):
    """Rows of different prompts in one batch keep to their own prompt (the path eval and export's
    answer check use): the same prompt twice in a batch with others gives the same greedy text, and
    different prompts give different texts. (Greedy text is not compared with one-at-a-time decoding:
    a different batch size takes different kernels, and a near-tie may then resolve the other way.)"""
    fmt = get_format()
    questions = [QUESTION, "What is 7 times 8?", QUESTION, "A bus has 40 seats and 12 are empty. How many people sit?"]
    params = SamplingParams(max_tokens=24, temperature=0.0, prefix=fmt.prefill)
    together = [r[0] for r in backend.chat([fmt.messages(q) for q in questions], params)]
    assert together[0].text == together[2].text
    assert len({together[0].text, together[1].text, together[3].text}) == 3
    assert all(r.completion_tokens == 24 or r.finish_reason == "stop" for r in together)
    assert len({r.prompt_tokens for r in together}) == 3  # each row counted its own prompt


QUESTIONS = ["What is 7 times 8?", "A bus has 40 seats and 12 are empty. How many people sit?", QUESTION,
             "Tom has 3 apples and buys 4 more. How many apples does he have?", "What is 100 minus 37?"]


def test_continuous_batching_admits_the_next_prompt_when_one_finishes_and_evaluates_the_prefix_once(backend):
    """At most `max_live_prompts` prompts decode at once, the next admitted at the step a live prompt
    finished (not after the whole batch), a prompt's rows admitted together; the prompts' common prefix
    (system prompt and template) is evaluated once; each row keeps to its own prompt."""
    fmt = get_format()
    tok = backend.llm.tokenize
    prompts = [tok(backend.render(fmt.messages(q), fmt.prefill).encode(), add_bos=False, special=True)
               for q in QUESTIONS]
    rows = [prompts[0], prompts[0], *prompts[1:]]  # the first prompt twice: one group of two rows
    decoder = backend._decoder()
    out, _ = decoder.generate_batch(rows, [0.0] * len(rows), list(range(len(rows))), 20, max_live_prompts=2)
    stats = decoder.last_stats
    assert len(out) == len(rows) and all(1 <= r.tokens <= 20 for r in out)
    assert out[0].text == out[1].text  # the same prompt, decoded in the same steps
    assert stats["max_live_prompts"] == 2 and len(stats["admitted_at"]) == len(prompts)
    assert stats["admitted_at"][:2] == [0, 0]
    assert set(stats["admitted_at"][2:]) <= set(stats["finished_at"])  # admitted as a prompt finished
    assert len(stats["finished_at"]) == len(prompts)
    again, _ = decoder.generate_batch(rows, [0.0] * len(rows), list(range(len(rows))), 20, max_live_prompts=2)
    assert [r.token_ids for r in again] == [r.token_ids for r in out]  # admission follows tokens, not timing
    prefix = stats["prefix_tokens"]
    assert prefix > 50 and all(p[:prefix] == prompts[0][:prefix] for p in prompts)
    assert stats["prompt_tokens_evaluated"] == prefix + sum(len(p) - prefix for p in prompts)
    # without a limit every prompt starts at once, on the same tokens per row
    together, _ = decoder.generate_batch(rows, [0.0] * len(rows), list(range(len(rows))), 20)
    assert decoder.last_stats["admitted_at"] == [0] * len(prompts)
    assert decoder.last_stats["max_live_rows"] == len(rows)
    assert [r.tokens for r in together] and all(1 <= r.tokens <= 20 for r in together)
    with pytest.raises(ValueError, match="KV cells"):
        decoder.generate_batch([prompts[0]], [0.0], [0], decoder.n_ctx)


def test_backend_limits_the_prompts_decoded_at_once(backend):
    """`parallel_prompts` (eval's `concurrency`) is the decoder's live-prompt limit for a call of many."""
    fmt = get_format()
    params = SamplingParams(max_tokens=12, temperature=0.0, prefix=fmt.prefill)
    backend.parallel_prompts = 2
    try:
        out = backend.chat([fmt.messages(q) for q in QUESTIONS], params)
    finally:
        backend.parallel_prompts = None
    assert len(out) == len(QUESTIONS) and all(len(r) == 1 for r in out)
    assert backend._decoder().last_stats["max_live_prompts"] == 2


def test_a_reasoning_cut_by_its_budget_is_given_an_answer_on_the_real_engine(backend):
    """Answer forcing on llama.cpp: every row cut inside its reasoning (3 of max_tokens 8 left to it,
    EOS ignored) is continued from the closed reasoning and open answer, in one batch, within the
    answer's 5; the engine's counts add up and the tags the runtime wrote are not counted as generated."""
    from edgereason.backends.forcing import force_answers, reasoning_params

    fmt = get_format()
    batch = [fmt.messages(q) for q in QUESTIONS[:3]]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, stop=fmt.stop_sequences(),
                            prefix=fmt.prefill, force_answer=5)
    rows = backend.chat(batch, reasoning_params(params, fmt))
    cut = [(c.text, c.completion_tokens) for row in rows for c in row]
    assert all(c.finish_reason == "length" and fmt.tags["answer_open"] not in c.text for row in rows for c in row)
    assert force_answers(backend, batch, rows, params, fmt) == 3
    for (before, n_before), (c,) in zip(cut, rows, strict=True):
        assert c.text.startswith(before + fmt.forced_answer_suffix(before))
        assert c.forced_answer_tokens is not None and 1 <= c.forced_answer_tokens <= 5
        assert n_before == 3 and c.completion_tokens == n_before + c.forced_answer_tokens <= params.max_tokens
        # EOS ignored: only the answer's closing tag (a stop string) ends it before its 5 tokens
        assert c.forced_answer_tokens == 5 or (c.finish_reason == "stop" and c.text.endswith(fmt.tags["answer_close"]))
    assert force_answers(backend, batch, rows, params, fmt) == 0  # nothing left to force


def test_a_constrained_forced_answer_keeps_to_the_formats_answer_grammar(backend):
    """Constrained decoding: the forced answer is decoded under the format's answer grammar (one short
    line, then the closing tag), so whatever the model samples it cannot reopen a tag or ramble."""
    import re

    from edgereason.backends.forcing import force_answers, reasoning_params

    fmt = get_format()
    batch = [fmt.messages(q) for q in QUESTIONS[:2]]
    params = SamplingParams(max_tokens=28, temperature=0.9, seed=3, ignore_eos=True, stop=fmt.stop_sequences(),
                            prefix=fmt.prefill, grammar=fmt.grammar(after_prefill=True), force_answer=24)
    rows = backend.chat(batch, reasoning_params(params, fmt))
    cut = [c.text for row in rows for c in row]
    assert force_answers(backend, batch, rows, params, fmt) == 2
    for before, (c,) in zip(cut, rows, strict=True):
        answer = c.text[len(before + fmt.forced_answer_suffix(before)):]
        assert re.fullmatch(r" *[^<\n ][^<\n]*(\n?</answer>)?", answer), answer
        assert c.finish_reason == "length" or fmt.parse(c.text).valid


def test_a_constrained_reasoning_that_the_model_ends_is_forced_not_made_to_run_on(backend):
    """A model that ends its reasoning (EOS biased to the top) under a constrained forced-answer
    request: the first pass's grammar lets it end there, after one token, and the runtime forces its
    answer, as unconstrained. Under the whole completion's grammar that EOS is refused and the model
    is made to write on to the budget: the case the answer-optional grammar exists for."""
    from dataclasses import replace

    from edgereason.backends.forcing import force_answers, reasoning_params

    fmt = get_format()
    batch = [fmt.messages(QUESTIONS[0])]
    params = SamplingParams(max_tokens=24, temperature=0.0, stop=fmt.stop_sequences(), prefix=fmt.prefill,
                            grammar=fmt.grammar(after_prefill=True), force_answer=8,
                            logit_bias={backend.llm.token_eos(): 100.0})
    first = reasoning_params(params, fmt)
    assert first.grammar == fmt.grammar(after_prefill=True, answer_optional=True) and first.max_tokens == 16
    (row,) = rows = backend.chat(batch, first)
    assert row[0].finish_reason == "stop" and row[0].completion_tokens == 1  # one reasoning character, then EOS
    assert force_answers(backend, batch, rows, params, fmt) == 1 and row[0].forced_answer_tokens
    (whole,) = backend.chat(batch, replace(first, grammar=params.grammar))[0]
    assert whole.finish_reason == "length" and whole.completion_tokens == 16  # EOS refused: on to the budget
