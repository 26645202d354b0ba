"""What the several-adapters tests (llama.cpp and vLLM) share: each model's first-token log-probability,
measured alone and then under concurrent requests for all of them. The adapters are random LoRAs
that move it far more than batching does, so a request that decoded with another model's weights
lands nearer that model's value than its own."""

import concurrent.futures as cf

PROMPT = "The capital of France is"


def first_logprob(client, model: str) -> float:
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=1, temperature=0.0, logprobs=1,
                                  extra_body={"ignore_eos": True})
    return r.choices[0].logprobs.token_logprobs[0]


def assert_each_decodes_as_itself(client, models: list[str], rounds: int) -> dict[str, float]:
    """Each model's value alone, then `rounds` concurrent requests per model, each within a third of the
    smallest gap between models of its own value. Returns the values measured alone."""
    alone = {m: first_logprob(client, m) for m in models}
    gaps = [abs(alone[a] - alone[b]) for a in alone for b in alone if a < b]
    assert min(gaps) > 0.05, alone  # the models really differ
    order = [m for _ in range(rounds) for m in models]
    with cf.ThreadPoolExecutor(len(order)) as pool:
        together = list(pool.map(lambda m: first_logprob(client, m), order))
    for m, lp in zip(order, together):
        assert abs(lp - alone[m]) < min(gaps) / 3, (m, lp, alone)
    return alone
