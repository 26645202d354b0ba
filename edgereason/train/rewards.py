"""GRPO reward functions: each a pure, documented function of one completion, plus the adapter that
turns them into TRL reward functions (batched, named, logged per component).

Every function reads the output shape through the shared `ReasoningFormat` and grades answers
with the shared grader, so the tags and the equivalence rules are declared once, in `edgereason`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgereason.formats import ReasoningFormat, get_format
from edgereason.grading import EQUIVALENT_CREDIT, EXACT_CREDIT, WRONG_CREDIT, answers_equal, extract_answer, partial_credit
from edgereason.rationales import rationale_fault
from edgereason.registry import Registry
from edgereason.work_check import NUM, check_arithmetic, to_number

# ---- format adherence ------------------------------------------------------------------------

FORMAT_EXACT = 3.0  #: a completion the format validator accepts
FORMAT_TAG = 0.5  #: each of the four tags present (reasoning open/close, answer open/close)
FORMAT_ORDER = 1.0  #: all four present and in the right order
FORMAT_INVALID_CAP = 2.5  #: partial credit never reaches an exact match (e.g. text after the answer)


def format_reward(text: str, fmt: ReasoningFormat | str | None = None) -> float:
    """3.0 for a valid completion; otherwise 0.5 per tag present + 1.0 for correct order, capped at
    2.5. For the boxed preset: 3.0 valid, 1.0 for a `\\boxed{}` that breaks some other rule, else 0."""
    f = get_format(fmt)
    parsed = f.parse(text)
    if parsed.valid:
        return FORMAT_EXACT
    if f.kind == "boxed":
        return 1.0 if parsed.answer else 0.0
    score = FORMAT_TAG * sum(parsed.tags_present.values()) + (FORMAT_ORDER if parsed.ordered else 0.0)
    return min(score, FORMAT_INVALID_CAP)


# ---- answer accuracy -------------------------------------------------------------------------


def accuracy_reward(text: str, gold: str, fmt: ReasoningFormat | str | None = None) -> float:
    """Graded correctness of the extracted answer: exact 3.0 / equivalent 1.5 / within 10% 0.5 /
    within 20% 0.25 / numeric miss -0.5 / wrong or missing -1.0 (see edgereason.grading)."""
    return partial_credit(extract_answer(text, fmt).text, gold)


def correctness_reward(text: str, gold: str, fmt: ReasoningFormat | str | None = None) -> float:
    """Plain binary correctness: 1.0 if the extracted answer is equivalent to the gold, else 0.0."""
    return 1.0 if answers_equal(extract_answer(text, fmt).text, gold) else 0.0


def closed_reasoning(text: str, fmt: ReasoningFormat | str | None = None) -> str | None:
    """The reasoning section when the completion closed it, else None: what a reward may credit
    (crediting unclosed reasoning taught run expD to ramble to the length limit)."""
    parsed = get_format(fmt).parse(text)
    if parsed.reasoning is None or not parsed.tags_present.get("reasoning_close", True):
        return None
    return parsed.reasoning


def derived_reward(text: str, gold: str, fmt: ReasoningFormat | str | None = None) -> float:
    """1.0 when the answer is correct AND derived: a closed reasoning section holds an arithmetic claim
    (`a op b ... = d`) that re-executes correctly and whose result d is the gold value. A gold that is
    not a number (yes/no, a choice letter) needs only correctness.

    Why: measured on runs expB-expE, outcome-only correctness paid the small model for guesses ("Omar has
    25 balloons" -> 25) on multi-step problems, so it learned to name a number from the question and
    skip the arithmetic; the shortcut then cost accuracy on the one-step problems it used to compute."""
    work = _work_to_check(text, gold, fmt)
    if not isinstance(work, str):
        return work
    target = to_number(gold.strip())
    return 1.0 if any(c.holds and c.result == target for c in check_arithmetic(work)) else 0.0


def _work_to_check(text: str, gold: str, fmt: ReasoningFormat | str | None) -> float | str:
    """What `derived` and `checked` decide alike: 0.0 for a wrong answer, 1.0 for a right one whose gold
    is not a number (nothing to derive), 0.0 when the reasoning was never closed; else the closed
    reasoning, whose arithmetic each checks in its own way."""
    if not correctness_reward(text, gold, fmt):
        return 0.0
    if to_number(gold.strip()) is None:
        return 1.0
    reasoning = closed_reasoning(text, fmt)
    return 0.0 if reasoning is None else reasoning


def checked_reward(text: str, gold: str, fmt: ReasoningFormat | str | None = None) -> float:
    """1.0 when the answer is correct AND the closed reasoning passes the check every SFT rationale
    passes (`rationale_fault`): each stated `a op b = c` step computes, and the answer is a value the
    reasoning computed. A gold that is not a number needs only correctness.

    Why: `derived` asks only that some claim computing the answer holds, so a chain with a wrong step
    that still lands on the answer (`19 - 14 = 3`, `3 - 4 = 1`, `1 * 3 = 3`) earns full reward. Measured
    after SFT (sftC -> GRPO, docs/sft.md): 40 GRPO steps on `derived` raised the share of false claims
    in greedy arith answers from 16.8% to 22.4% and lowered accuracy 73.0% -> 65.7% (p = 0.004)."""
    work = _work_to_check(text, gold, fmt)
    if not isinstance(work, str):
        return work
    if not check_arithmetic(work):
        return 0.0  # nothing re-executed: the answer is not shown to be derived
    return 0.0 if rationale_fault(work, gold) else 1.0


# ---- reasoning process -----------------------------------------------------------------------

PROCESS_ARITHMETIC_WEIGHT = 2.0  #: times the share of re-executed `a op b = c` claims that hold
PROCESS_STEPS_WEIGHT = 1.0  #: times min(distinct steps, PROCESS_STEP_TARGET) / PROCESS_STEP_TARGET
PROCESS_STEP_TARGET = 4  #: this many distinct reasoning steps earn the full step score
PROCESS_REPEAT_PENALTY = 0.5  #: subtracted per repeated step beyond the first repeat (degenerate loops)

def reasoning_steps(reasoning: str) -> tuple[int, int]:
    """(distinct steps, repeated steps): steps are non-empty lines, or sentences on a single line."""
    parts = [p.strip() for p in re.split(r"\n+|(?<=[.!?])\s+", reasoning) if len(p.strip()) > 3]
    distinct = len(set(parts))
    return distinct, len(parts) - distinct


def process_reward(text: str, fmt: ReasoningFormat | str | None = None) -> float:
    """Reasoning-process quality from the text alone (no model calls), in [-inf, 3]:
    2.0 x share of arithmetic claims that re-execute correctly (0 when there are none)
    + 1.0 x min(distinct steps, 4) / 4
    - 0.5 x (repeated steps - 1) when steps repeat (a loop is not progress)."""
    parsed = get_format(fmt).parse(text)
    reasoning = parsed.reasoning if parsed.reasoning is not None else text
    if not reasoning.strip():
        return 0.0
    checks = check_arithmetic(reasoning)
    arithmetic = sum(c.holds for c in checks) / len(checks) if checks else 0.0
    distinct, repeated = reasoning_steps(reasoning)
    score = PROCESS_ARITHMETIC_WEIGHT * arithmetic + PROCESS_STEPS_WEIGHT * min(distinct, PROCESS_STEP_TARGET) / PROCESS_STEP_TARGET
    if repeated > 1:
        score -= PROCESS_REPEAT_PENALTY * (repeated - 1)
    return score


def steps_reward(text: str, steps: Sequence[str | int], fmt: ReasoningFormat | str | None = None) -> float:
    """Share of a problem's known intermediate values (e.g. the arithmetic generator's value after
    each operation, the answer last) that the reasoning states, in [0, 1]; 0 when none are known.

    Outcome rewards alone let a small model learn a one-operation shortcut that solves one-step
    problems and skips the rest; this credits each step a complete solution must compute, so a
    partial chain scores between a shortcut and a full one even when the final answer is wrong.
    Only a closed reasoning section counts: measured (run expD), crediting an unclosed one taught
    the model to ramble through the values to the length limit and drop the format."""
    wanted = [v for v in (to_number(str(x)) for x in steps) if v is not None]
    reasoning = closed_reasoning(text, fmt)
    if not wanted or reasoning is None:
        return 0.0
    stated = {to_number(m) for m in re.findall(NUM, reasoning)}
    return sum(v in stated for v in wanted) / len(wanted)


# ---- length control --------------------------------------------------------------------------


@dataclass(frozen=True)
class CosineLengthParams:
    """Cosine-scaled length reward (Open-RS, after Yeo et al. 2025): correct answers earn more when
    shorter (max_correct at length 0 down to min_correct at max_length); wrong answers are penalised
    less when longer (min_wrong at length 0 up to max_wrong at max_length)."""

    min_correct: float = 0.5
    max_correct: float = 1.0
    min_wrong: float = -1.0
    max_wrong: float = -0.5
    max_length: int = 1000  # tokens (or characters / 4 when no token count is known)


def cosine_length_reward(correct: bool, length: int, p: CosineLengthParams = CosineLengthParams()) -> float:
    progress = min(max(length, 0) / max(p.max_length, 1), 1.0)
    cosine = math.cos(progress * math.pi)
    lo, hi = (p.min_correct, p.max_correct) if correct else (p.max_wrong, p.min_wrong)
    return lo + 0.5 * (hi - lo) * (1.0 + cosine)


# ---- TRL adapters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RewardSpec:
    """A registered reward component: what it scores and its range (`high` may depend on the cosine
    length parameters, which a config sets)."""

    description: str
    low: float
    high: float | Callable[[CosineLengthParams], float]

    def ceiling(self, cosine: CosineLengthParams = CosineLengthParams()) -> float:
        return self.high(cosine) if callable(self.high) else self.high


#: The components, in the order they are passed to TRL (its logs name them rewards/<name>/mean).
REWARDS: Registry[RewardSpec] = Registry("reward")
REWARDS.register("format", RewardSpec("format adherence (format_reward)", 0.0, FORMAT_EXACT))
REWARDS.register("process", RewardSpec("reasoning quality from the text: arithmetic that holds, distinct steps "
                                       "(process_reward)", -math.inf, PROCESS_ARITHMETIC_WEIGHT + PROCESS_STEPS_WEIGHT))
REWARDS.register("accuracy", RewardSpec("graded correctness (accuracy_reward)", WRONG_CREDIT, EXACT_CREDIT))
REWARDS.register("correctness", RewardSpec("binary correctness (correctness_reward)", 0.0, 1.0))
REWARDS.register("cosine_length", RewardSpec("correctness scaled by length (cosine_length_reward)",
                                             -math.inf, lambda p: max(p.max_correct, p.min_correct)))
REWARDS.register("steps", RewardSpec("share of the known intermediate values stated (steps_reward)", 0.0, 1.0))
REWARDS.register("derived", RewardSpec("correct and derived by a claim that holds (derived_reward)", 0.0, 1.0))
REWARDS.register("checked", RewardSpec("correct, and every stated step computes (checked_reward)", 0.0, 1.0))
REWARD_NAMES = tuple(REWARDS)


def reward_ceiling(weights: dict[str, float], cosine: CosineLengthParams = CosineLengthParams()) -> float:
    """The highest weighted total reward (saturation detection reads it)."""
    return sum(w * REWARDS.get(name).ceiling(cosine) for name, w in weights.items())


def _texts(completions: list) -> list[str]:
    """TRL passes strings for text prompts and message lists for conversational ones."""
    out = []
    for c in completions:
        if isinstance(c, list):
            out.append("".join(m.get("content", "") for m in c if isinstance(m, dict)))
        else:
            out.append(str(c))
    return out


def make_trl_rewards(
    fmt: ReasoningFormat | str | None,
    prefix: str = "",
    cosine: CosineLengthParams = CosineLengthParams(),
    on_batch: Callable[..., None] | None = None,
) -> list[Callable[..., list[float]]]:
    """Reward functions in REWARD_NAMES order, in TRL's calling convention.

    `prefix` is the format prefill the prompt ended with; it is put back in front of each completion
    before grading. `on_batch(prompts, texts, scores, ids=, correct=)` sees every scored batch
    (sample logging, format compliance, the curriculum's measurements).
    """
    f = get_format(fmt)

    def full(completions: list[Any]) -> list[str]:
        return [prefix + t for t in _texts(completions)]

    def format(completions: list[Any], **kw: Any) -> list[float]:
        return [format_reward(t, f) for t in full(completions)]

    def process(completions: list[Any], **kw: Any) -> list[float]:
        return [process_reward(t, f) for t in full(completions)]

    def accuracy(completions: list[Any], answer: list[str], prompts: list[Any] | None = None,
                 id: list[str] | None = None, **kw: Any) -> list[float]:
        texts = full(completions)
        scores = [accuracy_reward(t, g, f) for t, g in zip(texts, answer)]
        if on_batch is not None:
            correct = [s >= EQUIVALENT_CREDIT for s in scores]  # exact (3.0) or equivalent (1.5)
            on_batch(list(prompts or []), texts, {"accuracy": scores}, ids=list(id) if id is not None else None,
                     correct=correct)
        return scores

    def correctness(completions: list[Any], answer: list[str], **kw: Any) -> list[float]:
        return [correctness_reward(t, g, f) for t, g in zip(full(completions), answer)]

    def cosine_length(completions: list[Any], answer: list[str], completion_ids: list[list[int]] | None = None,
                      **kw: Any) -> list[float]:
        texts = full(completions)
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(t) // 4 for t in texts]
        return [
            cosine_length_reward(answers_equal(extract_answer(t, f).text, g), n, cosine)
            for t, g, n in zip(texts, answer, lengths)
        ]

    def steps(completions: list[Any], steps: list[str] | None = None, **kw: Any) -> list[float]:
        # the dataset's `steps` column: comma-separated known intermediate values ("" when none)
        known = [[v for v in (s or "").split(",") if v] for s in (steps or [""] * len(completions))]
        return [steps_reward(t, k, f) for t, k in zip(full(completions), known)]

    def derived(completions: list[Any], answer: list[str], **kw: Any) -> list[float]:
        return [derived_reward(t, g, f) for t, g in zip(full(completions), answer)]

    def checked(completions: list[Any], answer: list[str], **kw: Any) -> list[float]:
        return [checked_reward(t, g, f) for t, g in zip(full(completions), answer)]

    funcs = {fn.__name__: fn for fn in (format, process, accuracy, correctness, cosine_length, steps, derived, checked)}
    return [funcs[name] for name in REWARDS]
