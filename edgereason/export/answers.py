"""Answer-level verification: does an artifact give the merged model's answers?

Token agreement counts next-token matches; users see answers. On a fixed set of training-distribution
problems (never a test set), the merged model (transformers, float32) and each artifact (llama.cpp)
answer greedily in the reasoning format, and we report the share of problems where:
- the extracted answers are equal (`answer_agreement`, graded like eval: math-verify equivalence),
- format validity is the same (`format_agreement`),
beside each side's own format compliance and accuracy on the set.

The accuracy check (`AnswerSheet.paired`) asks what users lose: on held-out problems (a dev split,
never a test set) each artifact's correct answers are paired with the merged model's, with the exact
McNemar p-value of the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgereason.backends.base import Backend, SamplingParams
from edgereason.data import is_eval_only, is_test_set, load_benchmark, sample_problems
from edgereason.export.files import ExportError
from edgereason.formats import ReasoningFormat
from edgereason.grading import answers_equal, extract_answer
from edgereason.paired import mcnemar_exact
from edgereason.problems import Problem

ANSWER_SETS = ("arith-train", "gsm8k-train")
MAX_TOKENS = 192


def training_problems(n: int, sets: Sequence[str] = ANSWER_SETS, seed: int = 0) -> list[Problem]:
    """n problems drawn evenly from training sets (a set whose data is missing is skipped)."""
    refused = [s for s in sets if is_eval_only(s)]
    if refused:
        raise ExportError(f"{', '.join(refused)}: test sets are for evaluation only, not for calibration or checks")
    pools: list[list[Problem]] = []
    for name in sets:
        try:
            pools.append(load_benchmark(name))
        except FileNotFoundError:  # GSM8K not on this machine: the generated set still is
            continue
        except ValueError as e:  # an unknown name
            raise ExportError(str(e)) from None
    if not pools:
        raise ExportError(f"none of {', '.join(sets)} could be loaded")
    out: list[Problem] = []
    for i, pool in enumerate(pools):
        share = n // len(pools) + (1 if i < n % len(pools) else 0)
        out += sample_problems(pool, share, seed)
    return out


def held_out_problems(name: str, n: int, seed: int = 0) -> list[Problem]:
    """n problems of a held-out set for the accuracy check (a test set is refused: a ladder chooses on them)."""
    if is_test_set(name):
        raise ExportError(f"{name}: a test set is for evaluation only, not for choosing an artifact")
    try:
        pool = load_benchmark(name)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"accuracy check: {e}") from None
    return sample_problems(pool, n, seed)


@dataclass
class AnswerSheet:
    """One model's greedy answers to the problems, in order."""

    answers: list[str | None]
    valid: list[bool]
    correct: list[bool]
    texts: list[str]  # the completions, prefill included (the reference's become teacher-forced traces)

    @classmethod
    def answer(cls, backend: Backend, problems: Sequence[Problem], fmt: ReasoningFormat,
               max_tokens: int = MAX_TOKENS) -> AnswerSheet:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=fmt.stop_sequences(), prefix=fmt.prefill)
        rows = backend.chat([fmt.messages(p.question) for p in problems], params)
        texts = [row[0].text for row in rows]
        answers = [extract_answer(t, fmt).text for t in texts]
        return cls(answers, [fmt.parse(t).valid for t in texts],
                   [answers_equal(a, p.gold_answer) for a, p in zip(answers, problems)], texts)

    def compare(self, reference: AnswerSheet) -> dict[str, float]:
        n = max(1, len(self.answers))
        same = sum(
            (a is None and b is None) or (a is not None and b is not None and answers_equal(a, b))
            for a, b in zip(self.answers, reference.answers)
        )
        return {
            "answer_agreement": round(same / n, 4),
            "format_agreement": round(sum(a == b for a, b in zip(self.valid, reference.valid)) / n, 4),
            "format_compliance": round(sum(self.valid) / n, 4),
            "answer_accuracy": round(sum(self.correct) / n, 4),
        }

    def paired(self, reference: AnswerSheet) -> dict[str, float]:
        """This sheet's accuracy against the reference's on the same problems: both accuracies, the drop in
        points, the discordant counts and the exact McNemar p-value."""
        only_reference, only_it, p = mcnemar_exact(self.correct, reference.correct)
        n = max(1, len(self.correct))
        mine, theirs = sum(self.correct) / n, sum(reference.correct) / n
        return {"problems": len(self.correct), "accuracy": round(mine, 4), "reference_accuracy": round(theirs, 4),
                "drop_points": round(100 * (theirs - mine), 2), "only_it": only_it,
                "only_reference": only_reference, "p_value": p}

    def summary(self) -> dict[str, float]:
        n = max(1, len(self.answers))
        return {"format_compliance": round(sum(self.valid) / n, 4), "answer_accuracy": round(sum(self.correct) / n, 4)}
