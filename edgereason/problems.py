"""`Problem`: one question with a checkable gold answer, the unit every loader and generator yields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Problem:
    """One question with a checkable gold answer."""

    id: str
    question: str
    gold_answer: str
    solution: str | None = None
    level: int | None = None  # MATH level 1-5 where known
    source: str = "custom"
    subject: str | None = None
    choices: tuple[str, ...] | None = None  # multiple-choice options, when the task has them
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def prompt(self) -> str:
        """The question as asked: multiple-choice options are listed with letters A, B, C, ..."""
        if not self.choices:
            return self.question
        options = "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\n\n{options}\n\nAnswer with the letter of the correct choice."
