"""The OpenAI API's request bodies (the parts this server implements) and its error shape.

Unknown fields are ignored, as OpenAI-compatible servers do; fields of features this server does not have (tools,
logprobs, n > 1, penalties, ...) are refused with a 400 naming the field rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from oracle_base.errors import UsageError

MAX_STOP_SEQUENCES = 4  # as the OpenAI API


class APIError(UsageError):
    """An error the API returns as `{"error": {message, type, param, code}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",  # the error's `type`
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what a torch generator takes
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False  # an extension (as vLLM's): keep generating through the model's stop tokens

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, why) for every requested feature this server does not implement."""
        found = []
        if self.n != 1:
            found.append(("n", "only n=1 is supported"))
        if self.presence_penalty or self.frequency_penalty:
            field = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            found.append((field, "penalties are not supported; leave them at 0"))
        if self.logit_bias:
            found.append(("logit_bias", "logit_bias is not supported"))
        if self.stream_options is not None and not self.stream:
            found.append(("stream_options", "stream_options is only allowed when stream is true"))
        return found

    def stop_sequences(self) -> list[str]:
        return self.stop if isinstance(self.stop, list) else []


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        found = super().unsupported()
        if self.logprobs or self.top_logprobs:
            found.append(("logprobs", "logprobs are not supported"))
        for name in ("tools", "functions"):
            if getattr(self, name):
                found.append((name, "tool and function calling are not supported"))
        if self.tool_choice not in (None, "none"):
            found.append(("tool_choice", "tool calling is not supported"))
        if self.response_format and self.response_format.get("type") != "text":
            found.append(("response_format", "only the `text` response format is supported"))
        return found


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1)  # the OpenAI default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        found = super().unsupported()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            found.append(("prompt", "one prompt per request; send a string or a list of token ids"))
        if self.echo:
            found.append(("echo", "echo is not supported"))
        if self.suffix:
            found.append(("suffix", "suffix (insertion) is not supported"))
        if self.best_of not in (None, 1):
            found.append(("best_of", "only best_of=1 is supported"))
        if self.logprobs is not None:
            found.append(("logprobs", "logprobs are not supported"))
        return found
