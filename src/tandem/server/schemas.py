"""Request and response models of the OpenAI-compatible API, and how a conversation becomes a question.

Requests are validated strictly (JSON types as sent, unknown fields refused); every refusal names the
field it is about, so that it can be returned as an OpenAI error with `param` set.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_serializer, model_validator

from ..config import StrictModel
from ..prompts import Conversation
from ..types import Message

Effort = Literal["low", "medium", "high"]
SERVED_MODELS: dict[str, tuple[str, Effort | None]] = {
    # served id -> (pipeline method, effort; None: the configured default)
    "tandem": ("tandem", None),
    "tandem-low": ("tandem", "low"),
    "tandem-medium": ("tandem", "medium"),
    "tandem-high": ("tandem", "high"),
    "slm": ("slm", None),
    "llm": ("llm", None),
}


class RequestError(Exception):
    """A request the server refuses: becomes an OpenAI error body with this status."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- request ------------------------------------------------------------------------------------
class _Request(StrictModel):
    """A request body's part: validated as sent (JSON types are not coerced, NaN and infinities refused)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted, not used

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: str


class ChatCompletionRequest(_Request):
    """`POST /v1/chat/completions`. Standard fields tandem cannot honour are accepted only at their
    neutral values; tandem's own options come as extra body fields (`effort`, `handover`,
    `stage_budgets`, `return_trace`)."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None  # accepted, not used
    n: int | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None  # vLLM's and SGLang's extensions
    min_p: float | None = None
    repetition_penalty: float | None = None

    @property
    def sampling(self) -> tuple[tuple[str, Any], ...]:
        """The request's own sampling values, as runs take them (the models' roles may fix some)."""
        keys = ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
        return tuple((k, getattr(self, k)) for k in keys if getattr(self, k) is not None)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    # tandem's own options
    effort: Effort | None = None
    handover: Literal["continue", "conclude", "hint"] | None = None
    stage_budgets: list[int] | None = Field(default=None, min_length=1, max_length=16)
    thinking_budget: int | None = Field(default=None, ge=1, description="LLM tokens after which this run hands "
                                        "over whatever the policy says (its effort's largest budget)")
    return_trace: bool = False

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> ChatCompletionRequest:
        refuse = {
            "n": self.n not in (None, 1) and "only n=1 is supported",
            "tools": bool(self.tools) and "tools are not supported",
            "tool_choice": self.tool_choice not in (None, "none") and "tool_choice is not supported",
            "functions": bool(self.functions) and "functions are not supported",
            "function_call": self.function_call not in (None, "none") and "function_call is not supported",
            "parallel_tool_calls": self.parallel_tool_calls is not None and "parallel_tool_calls is not supported",
            "logprobs": bool(self.logprobs) and "logprobs are not supported",
            "top_logprobs": self.top_logprobs is not None and "top_logprobs is not supported",
            "logit_bias": bool(self.logit_bias) and "logit_bias is not supported",
            "response_format": self.response_format is not None and self.response_format.type != "text"
            and "only response_format type 'text' is supported",
            "top_p": self.top_p is not None and not 0 < self.top_p <= 1 and "top_p must be in (0, 1]",
            "presence_penalty": self.presence_penalty is not None and not -2 <= self.presence_penalty <= 2
            and "presence_penalty must be in [-2, 2]",
            "frequency_penalty": self.frequency_penalty is not None and not -2 <= self.frequency_penalty <= 2
            and "frequency_penalty must be in [-2, 2]",
            "top_k": self.top_k is not None and self.top_k < 0 and "top_k must be 0 (off) or more",
            "min_p": self.min_p is not None and not 0 <= self.min_p <= 1 and "min_p must be in [0, 1]",
            "repetition_penalty": self.repetition_penalty is not None and self.repetition_penalty <= 0
            and "repetition_penalty must be positive",
            "stream_options": self.stream_options is not None and not self.stream
            and "stream_options is only allowed when stream is true",
        }
        for param, why in refuse.items():
            if why:
                raise _Refused(param, str(why))
        if self.reasoning_effort is not None:
            if self.reasoning_effort not in ("low", "medium", "high"):
                raise _Refused("reasoning_effort", "reasoning_effort must be 'low', 'medium' or 'high'")
            if self.effort is not None and self.effort != self.reasoning_effort:
                raise _Refused("reasoning_effort", "reasoning_effort and effort differ")
        if (self.max_tokens is not None and self.max_completion_tokens is not None
                and self.max_tokens != self.max_completion_tokens):
            raise _Refused("max_completion_tokens", "max_tokens and max_completion_tokens differ")
        stops = self.stop_sequences
        if len(stops) > 4:
            raise _Refused("stop", "at most 4 stop sequences")
        if any(not s for s in stops):
            raise _Refused("stop", "stop sequences must not be empty")
        if self.stage_budgets is not None and min(self.stage_budgets) < 1:
            raise _Refused("stage_budgets", "stage budgets must be positive")
        return self

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def requested_effort(self) -> Effort | None:
        return self.effort or self.reasoning_effort  # type: ignore[return-value]


class _Refused(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]", "list[str]"):  # union member tags: not a field
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Validate a request body; raise RequestError(400) naming the offending field."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        if first["type"] == "json_invalid":
            raise RequestError(f"the request body is not valid JSON: {first['msg']}", code="invalid_json") from None
        if first["type"] == "model_type" and not first["loc"]:
            raise RequestError("the request body must be a JSON object", code="invalid_json") from None
        ctx = first.get("ctx") or {}
        refused = ctx.get("error")
        if isinstance(refused, _Refused):
            raise RequestError(refused.message, param=refused.param, code="unsupported_parameter"
                               if "not supported" in refused.message else "invalid_value") from None
        param = _loc(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            raise RequestError(f"unrecognized request argument: {param}", param=param,
                               code="unknown_parameter") from None
        if first["type"] == "missing":
            raise RequestError(f"missing required parameter: {param}", param=param,
                               code="missing_required_parameter") from None
        raise RequestError(f"invalid value for {param}: {first['msg']}", param=param,
                           code="invalid_value") from None


# ---- conversation -> question -------------------------------------------------------------------
def _quote(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in text.strip("\n").split("\n"))


def conversation_of(messages: list[ChatMessage]) -> tuple[str, Conversation]:
    """The question (the last user message) and what comes before it (`tandem.prompts.Conversation`:
    tandem's system prompt, then the client's system / developer messages; the earlier turns as turns,
    their thoughts stripped)."""
    if messages[-1].role != "user":
        raise RequestError("the last message must be from the user (tandem answers one question)",
                           param="messages", code="invalid_value")
    if not messages[-1].text.strip():
        raise RequestError("the last user message is empty", param=f"messages[{len(messages) - 1}].content",
                           code="invalid_value")
    chat = [Message("system" if m.role == "developer" else m.role, m.text) for m in messages]
    conversation, question = Conversation.from_messages(chat)
    return question, conversation


def build_question(messages: list[ChatMessage]) -> str:
    """Fold a conversation into one question (the form before conversations were passed as turns).

    A single user message is the question as it is. Otherwise, in this order and each only when
    present: the system / developer messages (joined by blank lines), then "Earlier conversation:"
    with every earlier user / assistant turn as "User:" or "Assistant:" followed by its text quoted
    line by line with "> ", then "Question:" and the last user message. The last message must be the
    user's."""
    if messages[-1].role != "user":
        raise RequestError("the last message must be from the user (tandem answers one question)",
                           param="messages", code="invalid_value")
    question = messages[-1].text
    if not question.strip():
        raise RequestError("the last user message is empty", param=f"messages[{len(messages) - 1}].content",
                           code="invalid_value")
    if len(messages) == 1:
        return question
    system = [m.text.strip() for m in messages[:-1] if m.role in ("system", "developer") and m.text.strip()]
    turns = [m for m in messages[:-1] if m.role in ("user", "assistant")]
    sections = []
    if system:
        sections.append("\n\n".join(system))
    if turns:
        quoted = [f"{'User' if m.role == 'user' else 'Assistant'}:\n{_quote(m.text)}" for m in turns]
        sections.append("Earlier conversation:\n\n" + "\n\n".join(quoted))
    if not sections:
        return question
    sections.append("Question:\n" + question.strip())
    return "\n\n".join(sections)


# ---- responses ----------------------------------------------------------------------------------
class CompletionUsage(StrictModel):
    """Over both models: prompt tokens the models computed (the SLM's shadow pass included, cache
    hits not) and tokens they generated."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] = Field(default_factory=dict)


class AssistantMessage(StrictModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None
    reasoning_content: str | None = None  # a reasoning LLM's thought (server.reasoning_field)
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _without_absent_thought(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("reasoning_content", "reasoning"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Choice(StrictModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(StrictModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    tandem: dict[str, Any]


class Delta(StrictModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChunkChoice(StrictModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(StrictModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    tandem: dict[str, Any] | None = None


class ModelCard(StrictModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tandem"
    tandem: dict[str, Any]


class ModelList(StrictModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
