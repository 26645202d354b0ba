"""OpenAI-compatible request and response models, plus edgereason's extensions.

Requests declare every field of OpenAI's chat and completions schemas. A field either works, is
accepted with its default value only (`_UNSUPPORTED_UNLESS_DEFAULT`: a non-default value is a 400
naming it), or is rejected; an unknown field is a 400 naming it, never silently dropped.

Extensions travel in `extra_body` of the official client:
- `voting`: {"k": 8, "temperature": 0.7, "early_stop": true, "mode": "majority"}: a vote over k samples;
  `mode` "verified" weighs each sample by whether its own arithmetic holds, "best" takes the
  best-checked sample, "repaired" votes after recomputing miscomputed steps (`edgereason.voting`);
- `reasoning`: false turns off the format grammar and the reasoning split;
- `grammar` / `structured_outputs.grammar` (completions): a GBNF grammar, llama-server and vLLM style;
- `ignore_eos`: keep generating to max_tokens (benchmarks and tests);
- `force_answer` (chat): tokens of max_tokens kept for a forced answer: a reasoning that runs out of
  the rest, or stops with no answer, is closed by the server, the answer opened, and the model
  writes it in these (0 = off; default: the server's `--force-answer`); such a choice carries
  `answer_forced: true`.
Responses carry `reasoning_content` (and `reasoning`, vLLM's current name) beside `content`, and per
choice `format_valid`, `format_errors` and `attempts`; a vote adds `voting` to the response.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgereason.voting import VoteMode


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string that is not valid Unicode text (JSON allows a lone UTF-16
    surrogate such as "\\ud800", which no tokenizer can encode)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _unencodable(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unencodable(v, f"{path}.{i}")
            if found:
                return found
    return None


class OpenAIBase(BaseModel):
    # Unknown fields are refused with a 400 that names them (see errors.py), never silently dropped.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _unencodable(data, "")
        if where:
            raise ValueError(f"{where} holds a lone UTF-16 surrogate, which is not valid Unicode text")
        return data


# ---- requests -----------------------------------------------------------------------------------

class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(OpenAIBase):
    """A message of the conversation. Assistant turns may carry reasoning (either field name) and tool
    calls with no content; tool results come back as role "tool"."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, v: Any) -> Any:
        if isinstance(v, list):
            other = sorted({p.type for p in v if p.type != "text"})
            if other:
                raise ValueError(f"content parts of type {', '.join(other)} are not supported by this text model")
            return "".join(p.text or "" for p in v)
        return v

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates read it: developer folds into system, reasoning kept."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                               "content": self.content if isinstance(self.content, str) else ""}
        reasoning = self.reasoning_content if self.reasoning_content is not None else self.reasoning
        if reasoning is not None:
            out["reasoning_content"] = reasoning
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        for key in ("name", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class VotingOptions(OpenAIBase):
    k: int = Field(ge=1, description="Samples to vote over (maj@k).")
    temperature: float = Field(0.7, ge=0, le=2)
    early_stop: bool = Field(True, description="Stop sampling once the leader cannot be overtaken.")
    mode: VoteMode = Field(VoteMode.MAJORITY, description="majority: one sample, one vote; verified: votes weighted "
                           "by a check of each sample's own arithmetic; best: the best-checked sample; repaired: "
                           "verified after recomputing miscomputed steps.")


class JSONSchemaFormat(BaseModel):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBase):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(OpenAIBase):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


#: Fields accepted with their default value only; anything else is a 400 that names them.
_UNSUPPORTED_UNLESS_DEFAULT: dict[str, Any] = {
    "audio": None, "modalities": None, "prediction": None, "web_search_options": None, "functions": None,
    "function_call": None, "service_tier": None, "suffix": None, "best_of": None, "echo": False,
    "prompt_cache_key": None, "safety_identifier": None, "verbosity": None,
}


class SamplingFields(OpenAIBase):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    # OpenAI fields this server refuses unless left at their default (see _UNSUPPORTED_UNLESS_DEFAULT).
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # extensions
    voting: VotingOptions | None = None
    reasoning: bool = Field(True, description="Constrain to the model's reasoning format and split reasoning_content.")
    ignore_eos: bool = Field(False, description="Keep generating to max_tokens (benchmarks, tests).")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not k.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys are token ids, not {k!r}")
            if not -100 <= b <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100], not {b}")
        return v

    def unsupported(self) -> list[str]:
        """Fields set to a value this server does not carry out."""
        fields = set(type(self).model_fields)
        return [k for k, default in _UNSUPPORTED_UNLESS_DEFAULT.items()
                if k in fields and getattr(self, k) not in (default, None)]

    def token_bias(self) -> dict[int, float] | None:
        return {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    verbosity: str | None = None
    force_answer: int | None = Field(None, ge=0, le=4096, description="Tokens of max_tokens kept for a forced answer "
                                     "when the reasoning runs out of the rest or stops with no answer (0 = off; None = "
                                     "the server's default).")

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        return self

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    # Constrained decoding on raw completions, under llama-server's and vLLM's field names, so this
    # server can itself be an upstream replica of another edgereason gateway.
    grammar: str | None = Field(None, description="GBNF grammar the completion must follow (llama-server style).")
    structured_outputs: dict[str, Any] | None = Field(None, description="vLLM style: {'grammar': GBNF}.")

    @field_validator("prompt")
    @classmethod
    def _one_text_prompt(cls, v: Any) -> Any:
        if isinstance(v, list):
            if len(v) == 1 and isinstance(v[0], str):
                return v[0]
            raise ValueError("send one text prompt per request (lists of prompts and token ids are not supported)")
        if not v:
            raise ValueError("prompt is empty")
        return v

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs


# ---- responses ----------------------------------------------------------------------------------

class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobModel(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobModel] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    format_valid: bool | None = None
    format_errors: list[str] = Field(default_factory=list)
    attempts: int = 1
    answer_forced: bool | None = Field(None, description="True when the completion ended without an answer and the "
                                       "server closed its reasoning and had the model write one (force_answer).")


class VoteGroup(BaseModel):
    answer: str
    count: int
    samples: list[int]
    weight: float | None = Field(None, description="The members' summed check scores (a vote that checks the work).")


class SampleCheck(BaseModel):
    """One sample's work check: what the weighted vote saw."""

    sample: int
    answer: str | None
    status: str = Field(description="consistent | wrong_arithmetic | not_derived | unchecked | no_answer")
    score: float
    claims: int
    reasons: list[str]
    repaired_answer: str | None = None


class VoteInfo(BaseModel):
    answer: str | None
    share: float
    votes: list[VoteGroup]
    invalid: int
    samples: int
    tie: bool
    k: int
    early_stopped: bool
    mode: VoteMode = VoteMode.MAJORITY
    note: str | None = Field(None, description="Why the vote ran in another mode than the one asked for.")
    checks: list[SampleCheck] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    voting: VoteInfo | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    format_valid: bool | None = None
    answer_forced: bool | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgereason"
    root: str | None = None
    parent: str | None = None  #: for a LoRA on the base: the base's id
    max_model_len: int | None = None
    format: str | None = None  #: the reasoning format it answers in


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    model: str
    backend: str
    queue_depth: int
    in_flight: int
    max_concurrency: int
    peak_in_flight: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/load_lora_adapter."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=200, description="The model id requests will name it by.")
    lora_path: str = Field(min_length=1, description="A GGUF LoRA file, or an export folder holding one.")


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body for POST /v1/unload_lora_adapter."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str = Field(min_length=1, max_length=200)
    lora_int_id: int | None = Field(None, description="Accepted for vLLM compatibility; the name decides.")
