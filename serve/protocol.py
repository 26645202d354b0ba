"""OpenAI-compatible request/response schemas plus edgereason's extensions (voting, reasoning).

Extensions travel in `extra_body` of the official client: `voting` ({"k": 8, "temperature": 0.7})
and `reasoning` (false turns off format-constrained decoding and the reasoning split).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    # Unknown fields are ignored (clients send many optional OpenAI fields); wrong types are 400s.
    model_config = ConfigDict(extra="ignore")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _flatten_parts(cls, v: Any) -> Any:
        """OpenAI content parts ([{"type": "text", "text": ...}]) become plain text."""
        if isinstance(v, list):
            return "".join(p.get("text", "") for p in v if isinstance(p, dict) and p.get("type") == "text")
        return v


class VotingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(ge=1, description="Samples to vote over (maj@k).")
    temperature: float = Field(0.7, ge=0, le=2)
    early_stop: bool = Field(True, description="Stop sampling once the leader cannot be overtaken.")


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class SamplingFields(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    voting: VotingOptions | None = None
    reasoning: bool = Field(True, description="Constrain to the model's reasoning format and split reasoning_content.")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields):
    prompt: str = Field(min_length=1)
    # Constrained decoding on raw completions, under llama-server's and vLLM's field names, so this
    # server can itself be an upstream replica of another edgereason gateway.
    grammar: str | None = Field(None, description="GBNF grammar the completion must follow (llama-server style).")
    structured_outputs: dict[str, Any] | None = Field(None, description="vLLM style: {'grammar': GBNF}.")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
