"""Any OpenAI-compatible HTTP endpoint (vLLM, SGLang, llama.cpp's servers, OpenAI) as a `Backend`.

The backend composes small layers, each in its own module:

- `_http`: the transport: one `httpx.Client`, retries, deadlines, size caps, and the one place
  where library errors (httpx, the network layer, JSON, SSE) become the project's (`raise ... from
  exc`): the mapping is listed there. The API key appears in no message, log or repr;
- `_wire`: the wire format: streamed chunks and log-prob objects to `TokenStep`s, top-k entropy,
  usage objects;
- `_echo`: scoring a text from the server's echo, checked before it is trusted;
- `_endpoints`: the server's own endpoints (applying the chat template, counting prompt tokens);
- `chat_template`: local chat templates, rendered as the embedded llama.cpp backend renders them.

Errors besides those of `_http`: a stream that ends with neither `[DONE]` nor a finish reason
(server killed mid-stream) -> `BackendError("stream ended unexpectedly ...")`; more tokens than
`max_tokens` -> `BackendProtocolError`; a local `chat_template` that refuses the conversation or
fails -> the errors of `tandem.backends.chat_template` (an `InputError`, a `BackendError`), one
that cannot render a probe conversation at construction -> `ConfigError`.

Two APIs, chosen in the config:

- `completions` (`POST /v1/completions`): raw text prompts. The chat template is applied by the
  server or by a template given in the config (`render`), so that a `continue` hand-over can send
  the exact text another model started; also the only API that can `score` a text.
- `chat` (`POST /v1/chat/completions`): messages only (e.g. OpenAI proper). A prompt with an
  `assistant_prefix` is sent with the assistant message last and `continue_final_message: true,
  add_generation_prompt: false` (vLLM's semantics): the server must support these fields, which
  OpenAI proper does not.

Usage comes from the final `usage` chunk (requested with `stream_options.include_usage`),
including `prompt_tokens_details.cached_tokens` when the server reports it (vLLM with
`--enable-prompt-tokens-details`, OpenAI); without it (a cancelled stream never gets it) every
prompt token counts as computed and the prompt is counted with the server's tokenizer endpoint
(`_endpoints`), generated tokens being those received: one per log-prob entry when the server sent
log-probs, else the received text (thought and answer) cut by the settings' `count_tokenizer`, else
one per streamed chunk of text.

Reasoning models (`reasoning = True`, `ModelInfo.thinks`): over the chat API the thought comes in its
own field (`delta.reasoning`, `delta.reasoning_content`: a server's reasoning parser, DeepSeek's
API, OpenRouter) and is streamed as the text, then `\n</think>\n\n` on the first answer token
(`_wire.ThoughtFields`); over the completions API it is the raw text up to `</think>`. An endpoint
that hides the thought (it streams no thought but reports `completion_tokens_details.
reasoning_tokens`, or reports many more generated tokens than it streamed: vLLM's
`include_reasoning = false` under a parser that cannot count reasoning tokens) is refused for a request
that may hand its thought over
(`GenerationRequest.thought_handover`): such a stream whose answer starts without a thought is read
to its end before anything is yielded, and then either refused (`UnsupportedError`; its usage,
reasoning tokens included, is filled in first) or yielded as an empty thought and the answer. Once
seen, later such requests are refused at once. The hidden tokens are generated tokens in the cost.

Sampling: the role's values (`tandem.backends.sampling`) go into the body under OpenAI's names
(`top_k`, `min_p`, `repetition_penalty` as vLLM and SGLang take them), the role's `extra_body` after
them, then the fields the backend relies on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ..config import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MIN_TOKENS_PER_S,
    DEFAULT_N_CTX,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOP_LOGPROBS,
)
from ..errors import BackendError, BackendProtocolError, ConfigError, TandemError, UnsupportedError
from ..types import (
    BackendBase,
    Capabilities,
    GenerationRequest,
    Message,
    ModelInfo,
    Prompt,
    ScoreResult,
    TokenStep,
    TokenStream,
    Usage,
)
from ._echo import EchoScorer
from ._endpoints import ServerEndpoints
from ._http import TOKEN_SLACK, BackendHTTPError, HttpClient, Watch, line_cap, stream_cap
from ._sse import iter_sse_data
from ._wire import ThoughtFields, apply_usage, parse_chunk, reasoning_tokens, topk_entropy
from .chat_template import ChatTemplateFailed, ChatTemplateRefused, render_chat, template_id
from .sampling import Sampling

if TYPE_CHECKING:
    from ..config import BackendSettings
    from .tokenizers import Tokenizer

log = logging.getLogger("tandem")

__all__ = [
    "BackendHTTPError",
    "OpenAIBackend",
    "OpenAIBackendConfig",
    "iter_sse_data",
    "topk_entropy",
]

Api = Literal["completions", "chat"]


def unstreamed_tokens(reported: int, streamed: int) -> int:
    """The tokens a stream's usage reports beyond those it streamed, when they are more than it
    streamed and more than `TOKEN_SLACK` (a thought generated and not shown, as the reasoning tokens
    of an endpoint that hides it without saying how many); otherwise 0 (chunks of several tokens, a
    final token without text)."""
    unseen = reported - streamed
    return unseen if unseen > max(streamed, TOKEN_SLACK) else 0


@dataclass(frozen=True)
class OpenAIBackendConfig:
    """One model behind one OpenAI-compatible endpoint.

    `base_url` is the API base the OpenAI SDK would take, e.g. `http://127.0.0.1:8000/v1`; the
    server's own endpoints (`/tokenize`, `/apply-template`) are looked up beside its `/v1`.
    `api_key` or `api_key_env` (the name of an environment variable, read at construction: an
    error if it is unset) give the bearer token. `n_params` is required: the cost model needs it.
    `timeout_s` is the longest wait for an answer: its headers and first streamed token, or a
    whole non-streamed answer; `idle_timeout_s` (default: `timeout_s`) the longest wait between two
    streamed data events (keep-alive comments do not count); a stream must end within
    `timeout_s + max_tokens / min_tokens_per_s` (see the module docstring). Retries
    (`max_retries`, exponential backoff from `retry_backoff_s`, capped at 8 s, or the server's
    `Retry-After`) happen only for connection errors, 5xx and 429, and never
    once a token was streamed. `tokenizer_id` / `chat_template_id` are free strings that say
    whether two endpoints share tokenizer and template (the pipeline compares them);
    `chat_template` (Jinja, with `bos_token` / `eos_token`) renders prompts locally instead of
    asking the server; when `chat_template_id` is empty it is then derived as LlamaCppBackend
    derives it (a hash of how the template renders a probe conversation), so an endpoint and an
    embedded model with the same template compare equal. `extra_body` is
    merged into every generation and scoring request (e.g. `{"repeat_penalty": 1.0}` for
    llama-cpp-python, whose default is 1.1 even at temperature 0); it cannot override the fields
    the backend relies on. `reasoning`: a reasoning model (see the module docstring); `sampling`:
    the role's sampling values (`tandem.backends.sampling.Sampling`, or a mapping of them).
    """

    base_url: str
    model: str
    n_params: int
    n_ctx: int = DEFAULT_N_CTX
    api: Api = "completions"
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    idle_timeout_s: float | None = None
    min_tokens_per_s: float = DEFAULT_MIN_TOKENS_PER_S
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    tokenizer_id: str = ""
    chat_template_id: str = ""
    chat_template: str | None = field(default=None, repr=False)
    bos_token: str = ""
    eos_token: str = ""
    supports_scoring: bool = True
    score_check: bool = True
    score_max_tokens: int = 1  # vLLM allows 0 with echo
    prompt_logprobs: bool = False  # also send vLLM's `prompt_logprobs` (implied there by echo)
    stream_usage: bool = True  # ask for a final usage chunk (`stream_options.include_usage`)
    count_prompt_tokens: bool = True  # tokenize on the server when no usage was reported
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    checksum: str = ""
    reasoning: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    max_in_flight: int | None = None  # the engine's own bound on concurrent calls (None: it queues them itself)

    def __post_init__(self) -> None:
        if isinstance(self.sampling, Mapping):
            given = dict(self.sampling)
            if "stop" in given:
                given["stop"] = tuple(given["stop"])
            try:
                object.__setattr__(self, "sampling", Sampling(**given))
            except TypeError as exc:
                raise ConfigError(f"invalid sampling settings: {exc}") from exc
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ConfigError("model (the served model name) must not be empty")
        if self.api not in ("completions", "chat"):
            raise ConfigError(f"api must be 'completions' or 'chat', got {self.api!r}")
        if not isinstance(self.n_params, int) or self.n_params <= 0:
            raise ConfigError("n_params (the model's parameter count, for FLOPs) must be a positive int")
        if self.n_ctx <= 0:
            raise ConfigError("n_ctx must be positive")
        if self.api_key is not None and self.api_key_env is not None:
            raise ConfigError("give api_key or api_key_env, not both")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("timeouts must be positive")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ConfigError("idle_timeout_s must be positive")
        if not self.min_tokens_per_s > 0:
            raise ConfigError("min_tokens_per_s must be positive")
        if not 0 <= self.max_retries <= 10:
            raise ConfigError("max_retries must be between 0 and 10")
        if self.retry_backoff_s < 0:
            raise ConfigError("retry_backoff_s must not be negative")
        if self.top_logprobs < 0:
            raise ConfigError("top_logprobs must not be negative")
        if self.score_max_tokens < 0:
            raise ConfigError("score_max_tokens must not be negative")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OpenAIBackendConfig:
        """Build from a mapping (a config file's section); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown OpenAI backend option(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid OpenAI backend options: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> OpenAIBackendConfig:
        """The config a settings file's `[llm]` / `[slm]` section with `kind = "openai"` describes."""
        return cls(
            base_url=settings.base_url or "", model=settings.model, api_key_env=settings.api_key_env,
            n_params=settings.n_params or 0, n_ctx=settings.n_ctx, timeout_s=settings.timeout_s,
            idle_timeout_s=settings.idle_timeout_s, min_tokens_per_s=settings.min_tokens_per_s,
            max_retries=settings.max_retries, top_logprobs=settings.top_logprobs, api=settings.api,
            tokenizer_id=settings.tokenizer_id, chat_template_id=settings.chat_template_id,
            reasoning=settings.reasoning, sampling=Sampling.from_settings(settings),
            max_in_flight=settings.max_in_flight,
        )


class OpenAIBackend(BackendBase):
    """A `Backend` for one model served by an OpenAI-compatible endpoint.

    `transport` replaces the network (e.g. `httpx.MockTransport` in tests); `tokenizer` counts the
    generated tokens of a stream that reported neither usage nor log-probs. The backend is safe to
    share between threads only for independent calls; a `TokenStream` belongs to one consumer.
    """

    max_in_flight: int | None = None  # the endpoint queues and batches concurrent calls itself

    def __init__(self, config: OpenAIBackendConfig, *, transport: httpx.BaseTransport | None = None,
                 tokenizer: Tokenizer | None = None) -> None:
        self.config = config
        self.max_in_flight = config.max_in_flight
        self._tokenizer = tokenizer
        self._hides_thought = False  # the endpoint was seen hiding the model's thought
        self._told_undeclared = False
        key = config.api_key
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {config.api_key_env} (API key) is not set")
        name = config.name or config.model
        self._http = HttpClient(
            name=name, base_url=config.base_url, api_key=key or "", timeout_s=config.timeout_s,
            connect_timeout_s=config.connect_timeout_s, max_retries=config.max_retries,
            retry_backoff_s=config.retry_backoff_s, transport=transport,
        )
        self.guarded_network = self._http.guarded_network
        self._idle_s = config.idle_timeout_s if config.idle_timeout_s is not None else config.timeout_s
        self._endpoints = ServerEndpoints(self._http, config.model)
        self._echo = EchoScorer(
            self._http, model=config.model, top_logprobs=config.top_logprobs, max_tokens=config.score_max_tokens,
            prompt_logprobs=config.prompt_logprobs, check=config.score_check, merge=self._merge,
        )
        k = config.top_logprobs
        self._info = ModelInfo(
            name=name,
            n_params=config.n_params,
            n_ctx=config.n_ctx,
            tokenizer_id=config.tokenizer_id,
            chat_template_id=config.chat_template_id,
            capabilities=Capabilities(
                stream_logprobs=True,
                entropy="topk" if k > 0 else "none",
                score=config.api == "completions" and config.supports_scoring,
                raw_prompt=config.api == "completions",
            ),
            checksum=config.checksum,
            thinks=config.reasoning,
            sampling=config.sampling.to_dict(),
        )
        if config.chat_template is not None and not config.chat_template_id and config.api == "completions":
            try:
                self._info = replace(self._info, chat_template_id=template_id(self.render))
            except (ChatTemplateRefused, ChatTemplateFailed) as exc:
                self._http.close()
                raise ConfigError(f"invalid chat_template: {exc}") from exc
            except BaseException:
                self._http.close()
                raise

    # ---- Backend ---------------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, prompt: Prompt) -> str:
        """The raw prompt text: the chat template applied (locally with `chat_template`, else by
        the server, see `_endpoints`), the assistant turn opened and `assistant_prefix` appended."""
        if self.config.api == "chat":
            raise UnsupportedError(
                f"{self._info.name}: the chat API takes messages only, it has no raw prompt text"
            )
        return self._apply_template(prompt.messages) + prompt.assistant_prefix

    def stream(self, request: GenerationRequest) -> TokenStream:
        """Stream a completion. The prompt is rendered now (which may ask the server once, see
        `render`); the generation request is sent at the first `next()`. Closing the stream closes
        the HTTP response at once, which is how the server learns to stop."""
        if request.thought_handover and self._hides_thought:
            raise UnsupportedError(self._hidden_message())
        path, body, count_body = self._generation_body(request)
        usage = Usage()
        return TokenStream(self._generate(path, body, count_body, usage, request.thought_handover), usage)

    def score(self, text: str) -> ScoreResult:
        """Per-token log-probs of `text` from the server's echo (see `_echo`)."""
        if not self._info.capabilities.score:
            why = "the chat API cannot" if self.config.api == "chat" else "the config says the server cannot"
            raise UnsupportedError(f"{self._info.name}: scoring needs the completions API and echo; {why}")
        if not text:
            raise UnsupportedError("cannot score an empty text")
        return self._echo.score(text)

    # ---- generation ------------------------------------------------------------------------------
    def _apply_template(self, messages: Sequence[Message]) -> str:
        if self.config.chat_template is not None:
            return render_chat(self.config.chat_template, messages, owner=self._info.name,
                               bos_token=self.config.bos_token, eos_token=self.config.eos_token)
        return self._endpoints.apply_template(messages)

    def _merge(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**dict(self.config.extra_body), **body}

    def _hidden_message(self, n: int | None = None) -> str:
        seen = f"{n} reasoning tokens generated" if n is not None else "reasoning tokens generated"
        return (f"{self._info.name}: the endpoint hides the model's thought ({seen}, no reasoning text "
                "streamed): a continue, conclude or hint hand-over needs the thought; run the LLM alone (method llm) "
                "or serve the model where its thought is streamed (e.g. vLLM with --reasoning-parser and "
                "include_reasoning left on)")

    def _generation_body(self, req: GenerationRequest) -> tuple[str, dict[str, Any], dict[str, Any]]:
        cfg = self.config
        k = req.top_logprobs or cfg.top_logprobs
        body: dict[str, Any] = {
            **dict(cfg.extra_body), **cfg.sampling.resolve(req).http_fields(),
            "model": cfg.model, "stream": True, "max_tokens": req.max_tokens,
        }
        if cfg.stream_usage:
            body["stream_options"] = {"include_usage": True}
        messages = [{"role": m.role, "content": m.content} for m in req.prompt.messages]
        if cfg.api == "completions":
            prompt = self.render(req.prompt)
            body.update(prompt=prompt, logprobs=k)
            return "/completions", body, {"prompt": prompt}
        body.update(messages=messages, logprobs=True)
        if k > 0:
            body["top_logprobs"] = k
        count: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
        if req.prompt.assistant_prefix:
            messages.append({"role": "assistant", "content": req.prompt.assistant_prefix})
            cont = {"continue_final_message": True, "add_generation_prompt": False}
            body.update(cont)
            count.update(cont)
        return "/chat/completions", body, count

    def _generate(
        self, path: str, body: dict[str, Any], count_body: dict[str, Any], usage: Usage, handover: bool
    ) -> Generator[TokenStep, None, str]:
        cfg, http, name = self.config, self._http, self._info.name
        max_tokens = int(body["max_tokens"])
        chat = cfg.api == "chat"
        k = int(body.get("top_logprobs", 0) if chat else body.get("logprobs", 0))
        watch = Watch(cfg.timeout_s, self._idle_s, cfg.timeout_s + max_tokens / cfg.min_tokens_per_s, stream=True)
        resp = http.send(path, body, watch=watch)
        finish: str | None = None
        done = reported = ended_well = cancelled = by_entries = False
        n_tokens = hidden_tokens = 0
        thought = ThoughtFields(cfg.reasoning) if chat else None
        held: list[TokenStep] | None = None  # an answer read ahead of a thought that may be hidden
        received: list[str] = []  # the text as the server sent it (thought and answer), to count it
        try:
            for data in http.sse_data(resp, watch, cap=stream_cap(max_tokens, k), max_line=line_cap(k)):
                watch.data()
                if data.strip() == "[DONE]":
                    done = True
                    break
                chunk = http.parse_json(data, "stream chunk")
                with http.parsing("stream chunk"):
                    parsed = parse_chunk(chunk, chat=chat, with_entropy=k > 0)
                    if parsed.error is None and apply_usage(usage, chunk.get("usage")):
                        reported, hidden_tokens = True, reasoning_tokens(chunk["usage"])
                if parsed.error is not None:
                    raise BackendProtocolError(http.redact(f"{name}: server error mid-stream: {parsed.error}"))
                for delta in parsed.deltas:
                    n_tokens += delta.n_tokens
                    if n_tokens > max_tokens + TOKEN_SLACK:
                        raise BackendProtocolError(
                            f"{name}: the server sent more than {n_tokens - 1} tokens for max_tokens={max_tokens}"
                        )
                    if not reported:
                        usage.generated_tokens += delta.n_tokens
                    by_entries = by_entries or delta.entries
                    received.append(delta.text)
                    steps = delta.steps
                    if thought is not None:
                        if handover and cfg.reasoning and thought.state == "start" and delta.field == "content":
                            held = []  # no thought before the answer: hidden, or empty? the usage will say
                        if delta.field == "reasoning" and not cfg.reasoning and not self._told_undeclared:
                            self._told_undeclared = True
                            log.warning("%s streams a thought in its own field: it is written between <think> tags; "
                                        "set reasoning = true to run it as a reasoning LLM", name)
                        steps = thought.mark(delta)
                    if delta.finish is not None:
                        finish = delta.finish
                    if held is not None:
                        held.extend(steps)
                        continue
                    for step in steps:
                        watch.pause()
                        yield step
                        watch.resume()
            if not done and finish is None:
                raise BackendError(f"{name}: stream ended unexpectedly (neither [DONE] nor a finish reason)")
            ended_well = True
            if thought is not None and cfg.reasoning and thought.thought_chars == 0 and reported:
                hidden_tokens = hidden_tokens or unstreamed_tokens(usage.generated_tokens, n_tokens)
            if thought is not None and cfg.reasoning and hidden_tokens > 0 and thought.thought_chars == 0:
                self._hides_thought = True
                if handover:
                    raise UnsupportedError(self._hidden_message(hidden_tokens))
            yield from held or ()
        except GeneratorExit:
            cancelled = True
            raise
        finally:
            resp.close()
            if (ended_well or cancelled) and not reported:
                if not by_entries and self._tokenizer is not None:
                    self._count_generated("".join(received), usage)
                if cfg.count_prompt_tokens:
                    self._endpoints.count_prompt(count_body, usage)
        return finish or "stop"

    def _count_generated(self, text: str, usage: Usage) -> None:
        """Generated tokens of a stream without usage or log-probs: its text cut by the tokenizer
        (best effort: the count of streamed chunks stays when the tokenizer fails)."""
        if not text or self._tokenizer is None:
            return
        try:
            usage.generated_tokens = len(self._tokenizer.encode(text))
        except TandemError as exc:
            log.warning("%s: cannot count the generated tokens with %s: %s", self._info.name,
                        self._tokenizer.name, exc)
