"""Pydantic models of the OpenAI-compatible request / error bodies.

Responses are built as plain dicts (see :mod:`gboost.server.wire`): validating
tens of thousands of log-prob entries through pydantic would cost more than the
model call for small models.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      StrictStr, WithJsonSchema)

from gboost.sampling import SEED_MAX, SEED_MIN, SEED_RANGE, check_seed

__all__ = ["CompletionRequest", "ChatCompletionRequest", "ChatMessage", "StreamOptions", "Seed", "JSONInt", "ErrorBody", "ErrorResponse", "ModelCard",
           "ModelList"]


def _integral(v):
    """1.0 is the integer 1 in JSON (and JSON Schema); 1.5, "1" and true stay what they are (refused)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


#: an integer field: strict (no strings, booleans or fractions), but an integral number is one
JSONInt = Annotated[StrictInt, BeforeValidator(_integral)]

#: a sampling seed: what torch.Generator accepts, checked by the one function every route uses
Seed = Annotated[Optional[Annotated[JSONInt, WithJsonSchema({"type": "integer", "minimum": SEED_MIN,
                                                              "maximum": SEED_MAX})]],
                 AfterValidator(check_seed),
                 Field(description=f"sampling seed, an integer in {SEED_RANGE}")]

# Strict element types so that e.g. ["1", "2"] is a batch of text prompts rather
# than token ids, and [1.5] is rejected instead of truncated.
PromptType = Union[StrictStr, list[JSONInt], list[StrictStr], list[list[JSONInt]]]


class StreamOptions(BaseModel):
    """``stream_options``; other keys (vLLM's, newer OpenAI ones) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: Optional[StrictBool] = None  # a last chunk with usage


def _unsupported_sampling(req) -> Optional[str]:
    """The sampling options both request kinds know but do not implement: the first one set."""
    for name in ("logit_bias", "presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            return name
    return None


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` body (OpenAI legacy completions + a few vLLM extras).

    Unknown fields are ignored (OpenAI clients send e.g. ``user``); fields we know
    but do not implement are rejected with 400 when set to a non-default value.
    Types are strict, as the published schema says: ``"n": "2"``, ``"echo": "yes"`` or
    ``"max_tokens": 8.5`` are 400s, not coerced (an integer is accepted for a number, and an
    integral number such as ``8.0`` for an integer, as JSON Schema reads them).
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    prompt: PromptType
    max_tokens: Optional[JSONInt] = Field(16, ge=0, description="None: up to the context length")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Seed = None
    n: JSONInt = Field(1, ge=1, le=16)
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    logprobs: Optional[JSONInt] = Field(None, ge=0)
    echo: bool = False
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # vLLM extras
    stop_token_ids: Optional[list[JSONInt]] = None
    return_tokens_as_token_ids: Optional[bool] = None
    # known but unsupported (must stay at their defaults)
    best_of: Optional[JSONInt] = None
    suffix: Optional[str] = None
    logit_bias: Optional[dict[str, float]] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def unsupported(self) -> Optional[str]:
        """Name of the first unsupported option that was set, else None."""
        if self.best_of not in (None, 1):
            return "best_of"
        if self.suffix:
            return "suffix"
        return _unsupported_sampling(self)


class TextPart(BaseModel):
    """One part of a message's content; only text parts reach a text-only model."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One message of ``messages``. ``developer`` is OpenAI's newer name for ``system``; tool and
    function messages are refused (no tool calling), as is an assistant message without content."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, list[TextPart]]
    name: Optional[StrictStr] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body (OpenAI chat completions).

    The same strictness as :class:`CompletionRequest`. Sampling knobs may be ``null`` (OpenAI's
    schema allows it): null means the default. ``max_completion_tokens`` is OpenAI's newer name
    for ``max_tokens`` and wins when both are set; neither means up to the context length.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[JSONInt] = Field(None, ge=1)
    max_completion_tokens: Optional[JSONInt] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    seed: Seed = None
    n: Optional[JSONInt] = Field(None, ge=1, le=16)
    stop: Optional[Union[StrictStr, list[StrictStr]]] = None
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[JSONInt] = Field(None, ge=0, le=20)
    stream: Optional[StrictBool] = None
    stream_options: Optional[StreamOptions] = None
    # known but unsupported (must stay unset or at their defaults)
    tools: Optional[list] = None
    tool_choice: Optional[Union[StrictStr, dict]] = None
    functions: Optional[list] = None
    response_format: Optional[dict] = None
    logit_bias: Optional[dict[str, float]] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None

    def unsupported(self) -> Optional[str]:
        """Name of the first unsupported option that was set, else None."""
        if self.tools:
            return "tools"
        if self.tool_choice not in (None, "none"):
            return "tool_choice"
        if self.functions:
            return "functions"
        if self.response_format and self.response_format.get("type") != "text":
            return "response_format"
        return _unsupported_sampling(self)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[int, str]] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gboost"
    max_model_len: int
    vocab_size: int
    parent: Optional[str] = None   # a LoRA adapter's base model (vLLM's field), None for the base


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
