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
