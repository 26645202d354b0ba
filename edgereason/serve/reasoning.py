"""The streamed reasoning split: text deltas in, `reasoning_content` and `content` pieces out, the
format's tags never emitted. Text that might be the start of a tag is held back until it is clearly
not one, and each block's leading and trailing whitespace is dropped, so the streamed pieces join
into exactly the `reasoning_content` and `content` of the same completion without streaming."""

from __future__ import annotations

from edgereason.backends.base import partial_suffix
from edgereason.formats import ReasoningFormat


class ReasoningSplitter:
    """Splits streamed text into reasoning and answer deltas without emitting the tags.

    Text that might be the start of a tag is held back until it is clearly not one."""

    def __init__(self, fmt: ReasoningFormat) -> None:
        t = fmt.tags
        self.open_r, self.close_r = t["reasoning_open"], t["reasoning_close"]
        self.open_a, self.close_a = t["answer_open"], t["answer_close"]
        self.buffer = ""
        self.state = "before"  # before -> reasoning -> between -> answer -> after
        self.started = False  # the current block has emitted text (its leading whitespace is gone)
        self.pending = ""  # whitespace held back: emitted only if more text follows in the block

    def feed(self, delta: str) -> list[tuple[str, str]]:
        """(kind, text) pieces: kind is "reasoning" or "content"."""
        self.buffer += delta
        out: list[tuple[str, str]] = []
        while True:
            tag = {"before": self.open_r, "reasoning": self.close_r, "between": self.open_a, "answer": self.close_a}.get(self.state)
            if tag is None:
                self.buffer = ""
                return out
            pos = self.buffer.find(tag)
            if pos >= 0:
                self._emit(out, self.buffer[:pos])
                self.buffer = self.buffer[pos + len(tag):]
                self.state = {"before": "reasoning", "reasoning": "between", "between": "answer", "answer": "after"}[self.state]
                self.started, self.pending = False, ""  # a block's trailing whitespace is dropped
                continue
            keep = partial_suffix(self.buffer, tag)
            self._emit(out, self.buffer[: len(self.buffer) - keep])
            self.buffer = self.buffer[len(self.buffer) - keep:]
            return out

    def flush(self) -> list[tuple[str, str]]:
        """What is still held back at the end of the stream (a partial tag that never completed)."""
        out: list[tuple[str, str]] = []
        self._emit(out, self.buffer)
        self.buffer = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if not text:
            return
        if self.state in ("reasoning", "answer"):
            if not self.started:
                text = text.lstrip()
                if not text:
                    return
                self.started = True
            text = self.pending + text
            body = text.rstrip()
            self.pending = text[len(body):]
            if body:
                out.append(("reasoning" if self.state == "reasoning" else "content", body))
        elif self.state in ("before", "after") and text.strip():
            # Text outside the blocks (an engine that ignored the grammar) is passed on, not lost.
            out.append(("content", text))

