"""Answer extraction and grading, shared by train rewards, serve voting and eval.

Equivalence is decided by math-verify (LaTeX, sets, intervals, symbolic forms) behind a fast exact
path for plain numbers, which covers almost every GSM8K answer without touching sympy. Every
comparison is time-bounded: math-verify's own SIGALRM timeout in the main thread, and a separate
worker process (killed on overrun) in any other thread, where SIGALRM is unavailable.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from edgereason.formats import ReasoningFormat, get_format

AnswerRule = Literal["answer_tag", "boxed", "gsm8k", "last_number", "none"]

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ExtractedAnswer:
    """The answer found in a completion and the rule that found it."""

    text: str | None
    rule: AnswerRule


_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_GSM8K_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


def extract_answer(completion: str, fmt: ReasoningFormat | str | None = None) -> ExtractedAnswer:
    """Find the final answer: the format's answer tag, then `\\boxed{}`, then GSM8K's `#### N`,
    then the last number in the text."""
    if not completion:
        return ExtractedAnswer(None, "none")
    f = get_format(fmt)
    if f.kind == "tags":
        parsed = f.parse(completion)
        if parsed.tags_present.get("answer_open") and parsed.answer:
            return ExtractedAnswer(parsed.answer, "answer_tag")
    boxed = last_boxed(completion)
    if boxed:
        return ExtractedAnswer(boxed, "boxed")
    marked = _last_gsm8k_marker(completion)
    if marked:
        return ExtractedAnswer(marked, "gsm8k")
    numbers = _NUMBER_RE.findall(completion)
    if numbers:
        return ExtractedAnswer(numbers[-1], "last_number")
    return ExtractedAnswer(None, "none")


def _last_gsm8k_marker(text: str) -> str | None:
    """The answer after the last GSM8K `#### answer` marker, if any."""
    matches = list(_GSM8K_RE.finditer(text))
    return (matches[-1].group(1).strip() or None) if matches else None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


# ---- normalisation ---------------------------------------------------------------------------

_UNIT_WORDS = (
    r"dollars?|cents?|usd|euros?|pounds?|percent|per\s*cent|%|degrees?|°|"
    r"hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|"
    r"miles?|km|kilometers?|meters?|metres?|m|cm|mm|feet|foot|ft|inches?|in|yards?|"
    r"kg|g|grams?|kilograms?|lbs?|ounces?|oz|liters?|litres?|l|ml|gallons?|cups?|"
    r"units?|items?|people|students?|apples?|eggs?|pages?|points?|times?"
)
_LEADING_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|usd\s*)\s*", re.IGNORECASE)
_TRAILING_UNITS = re.compile(rf"(?:\s*(?:\\text\{{\s*)?(?:{_UNIT_WORDS})\}}?\.?)+$", re.IGNORECASE)
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_SIMPLE_FRAC = re.compile(r"^(-?\d+)\s*/\s*(-?\d+)$")


def normalize_answer(answer: str | None) -> str:
    """A canonical string for an answer: wrappers, `$`, currency, units and thousands separators
    removed. Used for the 'equal after normalisation' tier and for grouping votes."""
    if answer is None:
        return ""
    s = str(answer).strip()
    inner = last_boxed(s)
    if inner is not None and re.match(r"^(?:\$|\\\[|\\\(|\s)*\\(?:boxed|fbox)", s):
        s = inner
    s = s.strip().strip("$").strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = re.sub(r"\\(?:left|right|,|;|!|displaystyle)", "", s)
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    s = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)\s*", "", s, flags=re.IGNORECASE)
    s = re.sub(r"^[a-z]\s*=\s*(?=[-\d.\\])", "", s, flags=re.IGNORECASE)  # "x = 5" -> "5"
    m = re.fullmatch(r"[-+*/×÷\d.,\s()]+=\s*(-?[\d.,]+)\.?", s)  # "2 + 2 = 4." -> "4": the worked result
    if m:
        s = m.group(1)
    s = _LEADING_CURRENCY.sub("", s)
    s = _TRAILING_UNITS.sub("", s).strip()
    s = s.rstrip(".").strip()
    s = re.sub(r"\^\{?\\circ\}?$", "", s).strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"\s+", " ", s)
    if re.fullmatch(r"[A-Za-z][A-Za-z ]*", s):  # word answers (true/false, yes/no, choice letters)
        s = s.lower()
    return s


def to_number(answer: str | None) -> Fraction | None:
    """The exact value of a plain numeric answer (integer, decimal, a/b, \\frac{a}{b}), else None."""
    s = normalize_answer(answer)
    if not s:
        return None
    try:
        if re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", s):
            return Fraction(s)
        m = _SIMPLE_FRAC.fullmatch(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        m = _FRAC.fullmatch(s)
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


# ---- equivalence -----------------------------------------------------------------------------

# Two decimals closer than this (relative to the gold, at least 1) are the same answer:
# math-verify's default float_rounding=6 makes the same call.
_NUMERIC_TOLERANCE = Fraction(1, 10**6)


def answers_equal(pred: str | None, gold: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a predicted answer equals the gold one (math-verify semantics, time-bounded).

    Never raises and never takes much longer than `timeout_s`; a comparison that times out is
    judged not equal.
    """
    if pred is None or gold is None:
        return False
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if not np_ or not ng:
        return False
    if np_ == ng:
        return True
    fp, fg = to_number(np_), to_number(ng)
    if fp is not None and fg is not None:
        return abs(fp - fg) <= _NUMERIC_TOLERANCE * max(Fraction(1), abs(fg))
    return _bounded_verify(np_, ng, timeout_s)


def _wrap_latex(s: str) -> str:
    return s if s.startswith("$") else f"${s}$"


def _verify_in_process(pred: str, gold: str, timeout_s: float | None) -> bool:
    """math-verify proper; with a timeout only where SIGALRM works (the main thread)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    t = None if timeout_s is None else max(1, int(round(timeout_s)))
    try:
        g = parse(_wrap_latex(gold), parsing_timeout=t)
        p = parse(_wrap_latex(pred), parsing_timeout=t)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=t))
    except (TimeoutException, ValueError, RecursionError):
        # math-verify returns False on inputs it cannot handle; it raises only on a timeout (a
        # BaseException) and ValueError/RecursionError from sympy on exotic ones: "not shown equal"
        return False


def _worker_verify(pred: str, gold: str, timeout_s: float) -> bool:
    # Runs in the worker process's main thread, where math-verify's SIGALRM timeout works.
    return _verify_in_process(pred, gold, timeout_s)


_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _reset_pool() -> None:
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        from edgereason.compat.stdlib import pool_processes

        for proc in pool_processes(pool):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


atexit.register(_reset_pool)


def _bounded_verify(pred: str, gold: str, timeout_s: float) -> bool:
    if threading.current_thread() is threading.main_thread():
        return _verify_in_process(pred, gold, timeout_s)
    try:
        future = _get_pool().submit(_worker_verify, pred, gold, timeout_s)
        # The worker bounds itself; the extra margin covers a stuck worker and a cold start.
        return bool(future.result(timeout=timeout_s + 10))
    except (cf.TimeoutError, cf.process.BrokenProcessPool, OSError):
        # a stuck or dead worker (killed, out of memory): start a fresh one for the next call
        _reset_pool()
        return False


# ---- partial credit --------------------------------------------------------------------------

#: Reward tiers for `partial_credit`, from the GRPO study's answer reward.
EXACT_CREDIT = 3.0  #: the predicted string equals the gold string (after trimming whitespace)
EQUIVALENT_CREDIT = 1.5  #: equal after normalisation / math-verify equivalence
WITHIN_10_PERCENT_CREDIT = 0.5  #: numeric, |pred - gold| <= 10% of |gold|
WITHIN_20_PERCENT_CREDIT = 0.25  #: numeric, |pred - gold| <= 20% of |gold|
NUMERIC_MISS_CREDIT = -0.5  #: numeric but further than 20% away
WRONG_CREDIT = -1.0  #: no answer, or a non-numeric answer that is not equivalent


def partial_credit(pred: str | None, gold: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """Graded answer reward: exact 3.0, equivalent 1.5, numeric within 10% 0.5, within 20% 0.25,
    numeric further away -0.5, missing or otherwise wrong -1.0. When the gold is 0 the ratio is
    taken against 1 so the tiers stay defined."""
    if pred is None or not str(pred).strip() or gold is None:
        return WRONG_CREDIT
    if str(pred).strip() == str(gold).strip():
        return EXACT_CREDIT
    if answers_equal(pred, gold, timeout_s):
        return EQUIVALENT_CREDIT
    fp, fg = to_number(pred), to_number(gold)
    if fp is None or fg is None:
        return WRONG_CREDIT
    ratio = abs(fp - fg) / max(abs(fg), Fraction(1))
    if ratio <= Fraction(1, 10):
        return WITHIN_10_PERCENT_CREDIT
    if ratio <= Fraction(1, 5):
        return WITHIN_20_PERCENT_CREDIT
    return NUMERIC_MISS_CREDIT


def choice_letter(answer: str | None, choices: Sequence[str]) -> str | None:
    """The option a multiple-choice answer picks: a lone letter ("B", "(b)", "B) ..."), else the
    option whose text it equals. None when it picks nothing recognisable."""
    if not answer:
        return None
    letters = "ABCDEFGHIJ"[: len(choices)]
    s = answer.strip()
    m = re.match(rf"^\(?([{letters}{letters.lower()}])\)?(?:[).:\s]|$)", s)
    if m:
        return m.group(1).upper()
    norm = normalize_answer(s)
    for i, c in enumerate(choices):
        if normalize_answer(c) == norm:
            return letters[i]
    return None


def is_correct(answer: str | None, gold: str, choices: Sequence[str] | None = None) -> bool:
    """The one verdict for a graded answer: the chosen letter for multiple choice, else equivalence."""
    if choices:
        return choice_letter(answer, choices) == gold
    return answers_equal(answer, gold)


# ---- strict and flexible extraction (eval) ---------------------------------------------------
#
# An accuracy that only counts answers found in the format's answer field rises whenever a model
# learns the tags, whether or not its reasoning improved. So eval reports two accuracies side by
# side, as lm-evaluation-harness does with `strict-match` and `flexible-extract`:
# - strict: the answer in the format's answer field (the <answer> tag, or \boxed{} for the boxed
#   format); no field, no answer;
# - flexible: the answer found anywhere in the completion by one documented rule per answer type,
#   the same rule whatever the format (FLEXIBLE_RULES).

AnswerType = Literal["number", "math", "yes_no", "true_false", "choice", "set"]

FLEXIBLE_RULES: dict[str, str] = {
    "number": "\\boxed{} if present, else GSM8K's '#### N', else the number after the last 'answer is', "
              "else the last number in the completion (a fraction a/b or \\frac{a}{b} counts as one number)",
    "math": "\\boxed{} if present, else the last $...$ expression, else the last number",
    "yes_no": "the last standalone 'yes' or 'no' (any case)",
    "true_false": "the last standalone 'true' or 'false' (any case)",
    "choice": "the last option the completion commits to: 'answer is X', '(X)', 'X)' or a lone letter, "
              "or the text of an option, whichever comes last",
    "set": "the last {...} in the completion",
}

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_TRUE_FALSE = re.compile(r"\b(true|false)\b", re.IGNORECASE)
# A number as written in an answer: \frac{a}{b}, a/b, or a plain (signed, decimal, grouped) number.
_NUMERIC = r"-?\\[dt]?frac\{-?\d+\}\{-?\d+\}|(?:" + _NUMBER + r")(?:\s*/\s*(?:" + _NUMBER + r"))?"
_NUMERIC_RE = re.compile(_NUMERIC)
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*\$?\s*(" + _NUMERIC + ")", re.IGNORECASE)
_DOLLARS = re.compile(r"\$([^$]+)\$")
_SET = re.compile(r"\{[^{}]*\}")


def answer_type(gold: str, choices: Sequence[str] | None = None) -> AnswerType:
    """The kind of answer a problem expects, from its gold answer."""
    if choices:
        return "choice"
    g = normalize_answer(gold)
    if g in ("yes", "no"):
        return "yes_no"
    if g in ("true", "false"):
        return "true_false"
    if to_number(gold) is not None:
        return "number"
    if re.fullmatch(r"\s*\{[^{}]*\}\s*", gold):
        return "set"
    return "math"


def strict_answer(completion: str, fmt: ReasoningFormat | str | None = None) -> str | None:
    """The format's answer field, or None (an unclosed answer tag counts when the text ends in it)."""
    if not completion:
        return None
    f = get_format(fmt)
    if f.kind == "boxed":
        return last_boxed(completion)
    parsed = f.parse(completion)
    if parsed.tags_present.get("answer_open") and parsed.answer:
        return parsed.answer
    return None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def _choice_from_text(text: str, choices: Sequence[str]) -> str | None:
    letters = "ABCDEFGHIJ"[: len(choices)]
    candidates: list[tuple[int, str]] = []
    for m in re.finditer(rf"answer\s*(?:is|:)?\s*\(?([{letters}])\)?(?![A-Za-z])", text, re.IGNORECASE):
        candidates.append((m.start(1), m.group(1).upper()))
    for m in re.finditer(rf"(?:^|[\s(])\(?([{letters}])\)(?=\s|$|[.,:])", text):
        candidates.append((m.start(1), m.group(1)))
    for m in re.finditer(rf"(?:^|\n)\s*([{letters}])\s*(?:$|\n|\.)", text):
        candidates.append((m.start(1), m.group(1)))
    lowered = text.lower()
    for i, c in enumerate(choices):
        c_norm = c.strip().lower()
        if len(c_norm) >= 3:
            pos = lowered.rfind(c_norm)
            if pos >= 0:
                candidates.append((pos, letters[i]))
    return max(candidates)[1] if candidates else None


def flexible_answer(completion: str, kind: AnswerType, choices: Sequence[str] | None = None) -> str | None:
    """The answer found anywhere in `completion` by FLEXIBLE_RULES[kind], whatever its format."""
    if not completion:
        return None
    text = completion
    if kind == "choice":
        return _choice_from_text(text, choices or ())
    if kind == "yes_no":
        found = _last(_YES_NO, text)
        return found.lower() if found else None
    if kind == "true_false":
        found = _last(_TRUE_FALSE, text)
        return found.lower() if found else None
    if kind == "set":
        return _last(_SET, text)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    if kind == "number":
        marked = _last_gsm8k_marker(text)
        if marked:
            return marked
        found = _last(_ANSWER_IS, text)
        if found:
            return found
    if kind == "math":
        found = _last(_DOLLARS, text)
        if found:
            return found
    return _last(_NUMERIC_RE, text)


@dataclass(frozen=True)
class Verdicts:
    """Strict and flexible grading of one completion."""

    kind: AnswerType
    strict_answer: str | None
    strict_correct: bool
    flexible_answer: str | None
    flexible_correct: bool


def grade_completion(completion: str, gold: str, choices: Sequence[str] | None = None,
                     fmt: ReasoningFormat | str | None = None) -> Verdicts:
    """Both verdicts for one completion (the eval's grader)."""
    kind = answer_type(gold, choices)
    strict = strict_answer(completion, fmt)
    flexible = flexible_answer(completion, kind, choices)
    return Verdicts(kind, strict, is_correct(strict, gold, choices), flexible, is_correct(flexible, gold, choices))
