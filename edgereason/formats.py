"""The reasoning format: one object per preset, the single source of truth for the output shape.

Train rewards, serve validation, constrained decoding and eval compliance all go through a
`ReasoningFormat`; nothing else in the code base spells out the tags.

Validity of a tag format (`kind == "tags"`) is defined as:
  * the completion (ignoring surrounding whitespace) starts with the reasoning open tag;
  * each of the four tags occurs exactly once, in the order reasoning-open, reasoning-close,
    answer-open, answer-close;
  * only whitespace separates the reasoning block from the answer block, and only whitespace
    follows the answer block;
  * reasoning and answer each contain a non-whitespace character.
`ReasoningFormat.regex` accepts exactly the completions that `parse` calls valid (tested).
The GBNF grammar is a strict subset of that language, suitable for constrained decoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal


class FormatError(StrEnum):
    """Why a completion fails its format; the value is a stable machine-readable code."""

    MISSING_REASONING_OPEN = "missing_reasoning_open"
    MISSING_REASONING_CLOSE = "missing_reasoning_close"
    MISSING_ANSWER_OPEN = "missing_answer_open"
    MISSING_ANSWER_CLOSE = "missing_answer_close"
    DUPLICATE_TAG = "duplicate_tag"
    WRONG_ORDER = "wrong_order"
    TEXT_BEFORE_REASONING = "text_before_reasoning"
    TEXT_BETWEEN_BLOCKS = "text_between_blocks"
    TEXT_AFTER_ANSWER = "text_after_answer"
    EMPTY_REASONING = "empty_reasoning"
    EMPTY_ANSWER = "empty_answer"
    MISSING_BOXED = "missing_boxed"
    UNBALANCED_BOXED = "unbalanced_boxed"


@dataclass(frozen=True)
class ParsedCompletion:
    """A completion split by a `ReasoningFormat`.

    `reasoning` and `answer` are best-effort extractions even when the completion is invalid
    (None when the part cannot be located). `tags_present` and `ordered` feed partial format
    rewards without anyone re-implementing tag detection.
    """

    text: str
    reasoning: str | None
    answer: str | None
    errors: tuple[FormatError, ...]
    tags_present: dict[str, bool] = field(default_factory=dict)
    ordered: bool = False

    @property
    def valid(self) -> bool:
        return not self.errors

    def describe_errors(self) -> list[str]:
        return [e.value for e in self.errors]


_BOXED = "\\boxed{"
# Characters allowed after a closing \boxed{...} without counting as trailing text.
_BOXED_TRAILER = re.compile(r"[\s.$\\\])]*")


@dataclass(frozen=True)
class ReasoningFormat:
    """One output shape a model is trained, prompted, constrained and graded for."""

    name: str
    kind: Literal["tags", "boxed"]
    system_prompt: str
    reasoning_tag: str | None = None  # tag name, e.g. "reasoning" -> <reasoning>...</reasoning>
    answer_tag: str | None = None  # tag name, e.g. "answer" -> <answer>...</answer>

    # ---- tag strings -------------------------------------------------------------------
    @property
    def tags(self) -> dict[str, str]:
        """The four tag strings keyed by role (empty for the boxed kind)."""
        if self.kind != "tags":
            return {}
        r, a = self.reasoning_tag, self.answer_tag
        return {
            "reasoning_open": f"<{r}>",
            "reasoning_close": f"</{r}>",
            "answer_open": f"<{a}>",
            "answer_close": f"</{a}>",
        }

    def render(self, reasoning: str, answer: str) -> str:
        """The canonical completion for a reasoning and an answer (used for examples and tests)."""
        if self.kind == "boxed":
            return f"{reasoning.strip()}\n\nThe final answer is $\\boxed{{{answer.strip()}}}$."
        t = self.tags
        return (
            f"{t['reasoning_open']}\n{reasoning.strip()}\n{t['reasoning_close']}\n"
            f"{t['answer_open']}\n{answer.strip()}\n{t['answer_close']}"
        )

    @property
    def prefill(self) -> str:
        """Text to start the assistant turn with (R1-style "<think>\n" prefill): the reasoning open
        tag. Small models rarely emit an unfamiliar open tag on their own; once inside the block they
        learn to close it. Consumers that prefill parse `prefill + generated text`."""
        return f"{self.tags['reasoning_open']}\n" if self.kind == "tags" else ""

    def messages(self, question: str) -> list[dict[str, str]]:
        """The chat messages that ask `question` in this format (system prompt first)."""
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]

    def stop_sequences(self) -> list[str]:
        """Strings after which generation can stop: nothing valid follows them."""
        return [self.tags["answer_close"]] if self.kind == "tags" else []

    def forced_answer_suffix(self, text: str) -> str | None:
        """What to append to `text`, a completion that ended (cut by its token budget, or stopped by the
        model) before its answer block, to close the reasoning and open the answer block, so the model
        writes only the answer from there (budget forcing, as in s1): a loop that ran out of tokens
        still ends in an answer. Append-only, so a stream that already sent `text` sends this after
        it: a closing tag cut midway ("</reas") is completed, not doubled. None when there is nothing
        to force: the answer block is already open, or the format (boxed) has no blocks."""
        if self.kind != "tags" or self.tags["answer_open"] in text:
            return None
        close, answer_open = self.tags["reasoning_close"], self.tags["answer_open"]
        if close in text:
            close = ""
        else:  # "</" at least: a lone "<" is as likely a comparison as a tag
            cut = next((n for n in range(min(len(close) - 1, len(text)), 1, -1) if close.startswith(text[-n:])), 0)
            close = close[cut:] if cut else ("" if text.endswith("\n") else "\n") + close
        return f"{close}\n{answer_open}\n"

    # ---- parsing -----------------------------------------------------------------------
    def parse(self, text: str) -> ParsedCompletion:
        """Split `text` into reasoning and answer and list every way it breaks the format.

        Never raises, whatever the input.
        """
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        if self.kind == "boxed":
            return self._parse_boxed(text)
        return self._parse_tags(text)

    def _parse_tags(self, text: str) -> ParsedCompletion:
        t = self.tags
        errors: list[FormatError] = []
        counts = {role: text.count(tag) for role, tag in t.items()}
        pos = {role: text.find(tag) for role, tag in t.items()}
        present = {role: c > 0 for role, c in counts.items()}
        missing = {
            "reasoning_open": FormatError.MISSING_REASONING_OPEN,
            "reasoning_close": FormatError.MISSING_REASONING_CLOSE,
            "answer_open": FormatError.MISSING_ANSWER_OPEN,
            "answer_close": FormatError.MISSING_ANSWER_CLOSE,
        }
        for role, err in missing.items():
            if not present[role]:
                errors.append(err)
        if any(c > 1 for c in counts.values()):
            errors.append(FormatError.DUPLICATE_TAG)

        order = ["reasoning_open", "reasoning_close", "answer_open", "answer_close"]
        found = [pos[r] for r in order if pos[r] >= 0]
        ordered = all(present.values()) and found == sorted(found)
        if len(found) > 1 and found != sorted(found):
            errors.append(FormatError.WRONG_ORDER)

        reasoning = _between(text, pos["reasoning_open"], t["reasoning_open"], pos["reasoning_close"])
        answer = _between(text, pos["answer_open"], t["answer_open"], pos["answer_close"])

        if present["reasoning_open"] and text[: pos["reasoning_open"]].strip():
            errors.append(FormatError.TEXT_BEFORE_REASONING)
        if ordered:
            gap = text[pos["reasoning_close"] + len(t["reasoning_close"]) : pos["answer_open"]]
            if gap.strip():
                errors.append(FormatError.TEXT_BETWEEN_BLOCKS)
        if present["answer_close"] and text[text.rfind(t["answer_close"]) + len(t["answer_close"]) :].strip():
            errors.append(FormatError.TEXT_AFTER_ANSWER)
        if reasoning is not None and not reasoning.strip() and present["reasoning_close"]:
            errors.append(FormatError.EMPTY_REASONING)
        if answer is not None and not answer.strip() and present["answer_close"]:
            errors.append(FormatError.EMPTY_ANSWER)
        return ParsedCompletion(
            text=text,
            reasoning=reasoning.strip() if reasoning is not None else None,
            answer=answer.strip() if answer is not None else None,
            errors=tuple(dict.fromkeys(errors)),
            tags_present=present,
            ordered=ordered,
        )

    def _parse_boxed(self, text: str) -> ParsedCompletion:
        start = text.rfind(_BOXED)
        if start < 0:
            return ParsedCompletion(text, text.strip() or None, None, (FormatError.MISSING_BOXED,))
        inner, end = _balanced(text, start + len(_BOXED))
        errors: list[FormatError] = []
        if inner is None:
            errors.append(FormatError.UNBALANCED_BOXED)
            inner = text[start + len(_BOXED) :]
        else:
            trailer = text[end:]
            if _BOXED_TRAILER.fullmatch(trailer) is None:
                errors.append(FormatError.TEXT_AFTER_ANSWER)
        reasoning = text[:start].rstrip(" $\\[(").strip()
        if not reasoning:
            errors.append(FormatError.EMPTY_REASONING)
        if not inner.strip():
            errors.append(FormatError.EMPTY_ANSWER)
        return ParsedCompletion(
            text, reasoning or None, inner.strip(), tuple(errors), {"boxed": True}, ordered=True
        )

    # ---- constraints for decoding ------------------------------------------------------
    @property
    def regex(self) -> str:
        """A Python/`re` (and vLLM structured-outputs) regex of the valid completions."""
        if self.kind == "boxed":
            inner = r"(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})+"
            return rf"(?s)\A(?P<reasoning>.*?\S.*?)\\boxed\{{(?P<answer>{inner})\}}[\s.$\\\])]*\Z"
        t = {k: re.escape(v) for k, v in self.tags.items()}
        no_tag = "(?!" + "|".join(t.values()) + ")"
        body = rf"(?:{no_tag}.)*?{no_tag}\S(?:{no_tag}.)*?"
        return (
            rf"(?s)\A\s*{t['reasoning_open']}(?P<reasoning>{body}){t['reasoning_close']}"
            rf"\s*{t['answer_open']}(?P<answer>{body}){t['answer_close']}\s*\Z"
        )

    @property
    def gbnf(self) -> str:
        """The llama.cpp GBNF grammar of a whole completion (see `grammar`)."""
        return self.grammar()

    def grammar(self, after_prefill: bool = False, answer_optional: bool = False) -> str:
        """A llama.cpp GBNF grammar forcing the shape during decoding; with `after_prefill`, for
        the text that follows `self.prefill`. With `answer_optional`, the completion may also end
        inside its reasoning: the first pass of a forced-answer request (backends.forcing), where a
        model that ends its reasoning gets its answer block from the runtime. Without it, the
        grammar refuses the model's end of sequence there, and the model goes on past where it meant
        to stop, to the budget.

        Inside a block a '<' may not start a tag: it must be followed by a character that is not
        '/' and not the first letter of a tag name. The answer is kept to one short line so a
        constrained small model cannot ramble inside it.
        """
        if self.kind == "boxed":
            return "\n".join(
                [
                    r'root ::= body "\\boxed{" inner "}" [.$ ]*',
                    r'body ::= [^\\]+ (("\\" [^b] | "\\b" [^o]) [^\\]*)*',
                    r'inner ::= ([^{}] | "{" inner "}")+',
                ]
            )
        t = self.tags
        firsts = "".join(sorted({self.reasoning_tag[0], self.answer_tag[0], "/"}))  # type: ignore[index]
        opening = "" if after_prefill else f'"{t["reasoning_open"]}" "\\n" '
        # the answer may sit on its own line, as `render` writes it (and SFT teaches it)
        rest = f'"{t["reasoning_close"]}" "\\n" "{t["answer_open"]}" "\\n"? answer "\\n"? "{t["answer_close"]}"'
        return "\n".join(
            [
                f"root ::= {opening}reasoning ({rest})?" if answer_optional else f"root ::= {opening}reasoning {rest}",
                'reasoning ::= rchar+ ("\\n" | " ")*',
                f'rchar ::= [^<] | "<" [^<{firsts}]',
                _ANSWER_RULE,
            ]
        )

    def answer_grammar(self) -> str:
        """A GBNF grammar for what follows the answer's open tag and newline: a forced answer
        (backends.forcing) held to the same short answer `grammar` allows, then the closing tag."""
        if self.kind != "tags":
            raise ValueError(f"the {self.name} format has no answer block")
        return f'root ::= answer "\\n"? "{self.tags["answer_close"]}"\n{_ANSWER_RULE}'


#: The answer inside a tag format's answer block: one short line, so a constrained model cannot ramble.
_ANSWER_RULE = 'answer ::= [ ]* [^<\\n ] [^<\\n]{0,120}'


def _between(text: str, open_pos: int, open_tag: str, close_pos: int) -> str | None:
    """Content after an open tag: up to its close tag if that follows, else to the end."""
    if open_pos < 0:
        return None
    start = open_pos + len(open_tag)
    if close_pos >= start:
        return text[start:close_pos]
    nxt = text.find("<", start)
    return text[start:] if nxt < 0 else text[start:nxt]


def _balanced(text: str, start: int) -> tuple[str | None, int]:
    """The brace-balanced content starting at `start` (just after '{') and the index after '}'."""
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i], i + 1
    return None, len(text)


# Short instructions plus one worked example: measured on SmolLM2-135M (12 GSM8K train problems,
# T=0.8, with the prefill), the long instruction-only prompt gave 0/12 valid completions and this
# one 3/12, enough reward signal for GRPO to build on.
_TAG_PROMPT = (
    "Solve the math problem. Put your step-by-step reasoning between {ro} and {rc}, "
    "then the final answer between {ao} and {ac}.\n\n"
    "Example:\n"
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have now?\n"
    "{ro}\nTom starts with 3 apples and buys 4 more: 3 + 4 = 7.\n{rc}\n{ao}\n7\n{ac}"
)


def _tag_format(name: str, reasoning_tag: str, answer_tag: str) -> ReasoningFormat:
    prompt = _TAG_PROMPT.format(
        ro=f"<{reasoning_tag}>", rc=f"</{reasoning_tag}>", ao=f"<{answer_tag}>", ac=f"</{answer_tag}>"
    )
    return ReasoningFormat(name, "tags", prompt, reasoning_tag, answer_tag)


FORMATS: dict[str, ReasoningFormat] = {
    f.name: f
    for f in (
        _tag_format("reasoning-answer", "reasoning", "answer"),
        _tag_format("reasoning-solution", "reasoning", "solution"),
        _tag_format("think-answer", "think", "answer"),
        ReasoningFormat(
            "boxed",
            "boxed",
            "You are a careful math tutor. Reason step by step, then give the final answer as "
            "\\boxed{answer} at the very end.",
        ),
    )
}
DEFAULT_FORMAT = "reasoning-answer"


def get_format(name: str | ReasoningFormat | None = None) -> ReasoningFormat:
    """Look a preset up by name; raises ValueError naming the presets for an unknown one."""
    if isinstance(name, ReasoningFormat):
        return name
    key = name or DEFAULT_FORMAT
    try:
        return FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown reasoning format {key!r}; choose one of: {', '.join(FORMATS)}") from None
