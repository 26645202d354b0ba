"""Read the fields edgereason adds to OpenAI's objects (`reasoning_content`, `voting`, a model's `parent`).

The `openai` client keeps fields beyond its schema in pydantic's `model_extra`, typed `dict | None`;
`extra` narrows it once, with a message, instead of every test indexing an Optional.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def extra(obj: BaseModel) -> dict[str, Any]:
    """`obj`'s fields beyond OpenAI's schema; fails the test when the client kept none."""
    assert obj.model_extra is not None, f"{type(obj).__name__} kept no fields beyond OpenAI's schema"
    return obj.model_extra
