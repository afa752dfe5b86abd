"""Any OpenAI-compatible HTTP endpoint (vLLM, SGLang, llama.cpp's servers, OpenAI) as a `Backend`.

The transport (`_http`: one `httpx.Client`, retries, deadlines, size caps) is where every library
error becomes the project's (`raise ... from exc`); the mapping, the deadlines and the size caps are
listed there. Besides: a stream that ends with neither `[DONE]` nor a finish reason (server killed
mid-stream) -> `BackendError("stream ended unexpectedly ...")`; more tokens than `max_tokens` ->
`BackendProtocolError`; a local `chat_template` that refuses the conversation or fails -> the errors
of `tandem.backends.chat_template` (an `InputError`, a `BackendError`), as the embedded backend
raises them; one that cannot render a probe conversation at construction -> `ConfigError`.

Two APIs, chosen in the config:

- `completions` (`POST /v1/completions`): raw text prompts. The chat template is applied by the
  server or by a template given in the config (`render`), so that a `continue` hand-over can send the exact text another model
  started; also the only API that can `score` a text.
- `chat` (`POST /v1/chat/completions`): messages only (e.g. OpenAI proper). A prompt with an
  `assistant_prefix` is sent with the assistant message last and `continue_final_message: true,
  add_generation_prompt: false` (vLLM's semantics): the server must support these fields, which
  OpenAI proper does not.

Entropies are estimated from the top-k log-probs the server returns (see `_wire`).

Scoring uses the server's echo, checked before it is trusted (see `_echo`).

Usage comes from the final `usage` chunk (requested with `stream_options.include_usage`),
including `prompt_tokens_details.cached_tokens` when the server reports it (vLLM with
`--enable-prompt-tokens-details`, OpenAI); without it every prompt token counts as computed.
A cancelled stream never gets that chunk, and some servers (llama-cpp-python) never send it: the
prompt is then counted with the server's tokenizer endpoint (vLLM's `/tokenize`, llama.cpp's
`/tokenize`, llama-cpp-python's `/extras/tokenize`, probed once) and generated tokens are those
received; a server with no tokenizer endpoint (OpenAI) leaves `prompt_tokens` at 0.
"""

from __future__ import annotations

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
from ..errors import BackendError, BackendProtocolError, Cancelled, ConfigError, UnsupportedError
from ..types import (
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
from ._http import TOKEN_SLACK, BackendHTTPError, HttpClient, Watch, line_cap, stream_cap
from ._sse import iter_sse_data
from ._wire import apply_usage, parse_chunk, topk_entropy
from .chat_template import ChatTemplateFailed, ChatTemplateRefused, render_chat, template_id
from .guard import current_guard

if TYPE_CHECKING:
    from ..config import BackendSettings

__all__ = [
    "BackendHTTPError",
    "OpenAIBackend",
    "OpenAIBackendConfig",
    "iter_sse_data",
    "topk_entropy",
]

Api = Literal["completions", "chat"]

# statuses with which a probe learns that the server has no such endpoint or field
_ABSENT = frozenset({400, 404, 405, 422, 501})


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
    the backend relies on.
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

    def __post_init__(self) -> None:
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
        )


# ---- the backend ---------------------------------------------------------------------------------
class OpenAIBackend:
    """A `Backend` for one model served by an OpenAI-compatible endpoint.

    `transport` replaces the network (e.g. `httpx.MockTransport` in tests). The backend is safe to
    share between threads only for independent calls; a `TokenStream` belongs to one consumer.
    """

    max_in_flight: int | None = None  # the endpoint queues and batches concurrent calls itself

    def __init__(self, config: OpenAIBackendConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        key = config.api_key
        if config.api_key_env is not None:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(f"environment variable {config.api_key_env} (API key) is not set")
        self._http = HttpClient(
            name=config.name or config.model, base_url=config.base_url, api_key=key or "",
            timeout_s=config.timeout_s, connect_timeout_s=config.connect_timeout_s,
            max_retries=config.max_retries, retry_backoff_s=config.retry_backoff_s, transport=transport,
        )
        self.guarded_network = self._http.guarded_network
        self._idle_s = config.idle_timeout_s if config.idle_timeout_s is not None else config.timeout_s
        self._render_via: str | None = None  # "apply-template", "tokenize" or "none", once probed
        self._count_via: int | None = None  # index into the tokenize probes, -1: none works
        self._absent_paths: set[str] = set()
        self._echo = EchoScorer(
            self._http, model=config.model, top_logprobs=config.top_logprobs, max_tokens=config.score_max_tokens,
            prompt_logprobs=config.prompt_logprobs, check=config.score_check, merge=self._merge,
        )
        scoring = config.api == "completions" and config.supports_scoring
        k = config.top_logprobs
        self._info = ModelInfo(
            name=config.name or config.model,
            n_params=config.n_params,
            n_ctx=config.n_ctx,
            tokenizer_id=config.tokenizer_id,
            chat_template_id=config.chat_template_id,
            capabilities=Capabilities(
                stream_logprobs=True,
                entropy="topk" if k > 0 else "none",
                score=scoring,
                raw_prompt=config.api == "completions",
            ),
            checksum=config.checksum,
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
        the server: llama.cpp's `POST /apply-template` or vLLM's `POST /tokenize` + `/detokenize`,
        probed once), the assistant turn opened and `assistant_prefix` appended."""
        if self.config.api == "chat":
            raise UnsupportedError(
                f"{self._info.name}: the chat API takes messages only, it has no raw prompt text"
            )
        return self._apply_template(prompt.messages) + prompt.assistant_prefix

    def stream(self, request: GenerationRequest) -> TokenStream:
        """Stream a completion. The prompt is rendered now (which may ask the server once, see
        `render`); the generation request is sent at the first `next()`. Closing the stream closes
        the HTTP response at once, which is how the server learns to stop."""
        path, body, count_body = self._generation_body(request)
        usage = Usage()
        return TokenStream(self._generate(path, body, count_body, usage), usage)

    def score(self, text: str) -> ScoreResult:
        """Per-token log-probs of `text` from the server's echo (see `_echo`)."""
        if not self._info.capabilities.score:
            why = "the chat API cannot" if self.config.api == "chat" else "the config says the server cannot"
            raise UnsupportedError(f"{self._info.name}: scoring needs the completions API and echo; {why}")
        if not text:
            raise UnsupportedError("cannot score an empty text")
        return self._echo.score(text)

    # ---- generation ------------------------------------------------------------------------------
    def _merge(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**dict(self.config.extra_body), **body}

    def _generation_body(self, req: GenerationRequest) -> tuple[str, dict[str, Any], dict[str, Any]]:
        cfg = self.config
        k = req.top_logprobs or cfg.top_logprobs
        body: dict[str, Any] = {
            "model": cfg.model, "stream": True, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "seed": req.seed,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if cfg.stream_usage:
            body["stream_options"] = {"include_usage": True}
        messages = [{"role": m.role, "content": m.content} for m in req.prompt.messages]
        if cfg.api == "completions":
            prompt = self.render(req.prompt)
            body.update(prompt=prompt, logprobs=k)
            return "/completions", self._merge(body), {"prompt": prompt}
        body.update(messages=messages, logprobs=True)
        if k > 0:
            body["top_logprobs"] = k
        count: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
        if req.prompt.assistant_prefix:
            messages.append({"role": "assistant", "content": req.prompt.assistant_prefix})
            cont = {"continue_final_message": True, "add_generation_prompt": False}
            body.update(cont)
            count.update(cont)
        return "/chat/completions", self._merge(body), count

    def _generate(
        self, path: str, body: dict[str, Any], count_body: dict[str, Any], usage: Usage
    ) -> Generator[TokenStep, None, str]:
        cfg = self.config
        max_tokens = int(body["max_tokens"])
        chat = cfg.api == "chat"
        k = int(body.get("top_logprobs", 0) if chat else body.get("logprobs", 0))
        watch = Watch(cfg.timeout_s, self._idle_s, cfg.timeout_s + max_tokens / cfg.min_tokens_per_s, stream=True)
        resp = self._http.send(path, body, watch=watch)
        finish: str | None = None
        done = reported = ended_well = cancelled = False
        n_tokens = 0
        try:
            for data in self._http.sse_data(resp, watch, cap=stream_cap(max_tokens, k), max_line=line_cap(k)):
                watch.data()
                if data.strip() == "[DONE]":
                    done = True
                    break
                chunk = self._http.parse_json(data, "stream chunk")
                parsed = parse_chunk(chunk, chat=chat, with_entropy=k > 0)
                if parsed.error is not None:
                    raise BackendProtocolError(
                        self._http.redact(f"{self._info.name}: server error mid-stream: {parsed.error}")
                    )
                reported = apply_usage(usage, chunk.get("usage")) or reported
                for delta in parsed.deltas:
                    n_tokens += delta.n_tokens
                    if n_tokens > max_tokens + TOKEN_SLACK:
                        raise BackendProtocolError(
                            f"{self._info.name}: the server sent more than {n_tokens - 1} tokens for "
                            f"max_tokens={max_tokens}"
                        )
                    if not reported:
                        usage.generated_tokens += delta.n_tokens
                    for step in delta.steps:
                        watch.pause()
                        yield step
                        watch.resume()
                    if delta.finish is not None:
                        finish = delta.finish
            if not done and finish is None:
                raise BackendError(
                    f"{self._info.name}: stream ended unexpectedly (neither [DONE] nor a finish reason)"
                )
            ended_well = True
        except GeneratorExit:
            cancelled = True
            raise
        finally:
            resp.close()
            if (ended_well or cancelled) and not reported:
                self._count_prompt(count_body, usage)
        return finish or "stop"

    def _count_prompt(self, count_body: dict[str, Any], usage: Usage) -> None:
        """Prompt tokens when the server reported no usage (no usage chunk, or a cancelled stream):
        asked from the server's tokenizer endpoint; all counted as computed. Best effort: left at
        0 when the server has no such endpoint."""
        if not self.config.count_prompt_tokens or self._count_via == -1:
            return
        guard = current_guard()
        if guard is not None and (guard.interrupted or guard.expired()):
            return  # the run is over: no more calls for it
        if "messages" in count_body:
            probes = [("/tokenize", {"model": self.config.model, **count_body})]
        else:
            prompt = count_body["prompt"]
            probes = [
                ("/tokenize", {"model": self.config.model, "prompt": prompt}),  # vLLM, SGLang
                ("/tokenize", {"content": prompt, "add_special": True}),  # llama.cpp's llama-server
                ("/extras/tokenize", {"model": self.config.model, "input": prompt}),  # llama-cpp-python
            ]
        order = range(len(probes)) if self._count_via is None else [self._count_via]
        for i in order:
            path, body = probes[i]
            if path in self._absent_paths:
                continue
            try:
                data = self._http.post_json(path, body, root=True, retry=False)
            except BackendHTTPError as exc:
                if exc.status_code in (404, 405):
                    self._absent_paths.add(path)
                if exc.status_code in _ABSENT:
                    continue
                return
            except (BackendError, Cancelled):
                return
            n = data.get("count")
            tokens = data.get("tokens")
            if not isinstance(n, int):
                n = len(tokens) if isinstance(tokens, list) else None
            if n is None:
                continue
            self._count_via = i
            usage.prompt_tokens = usage.computed_prompt_tokens = n
            usage.cached_prompt_tokens = 0
            return
        if self._count_via is None:
            self._count_via = -1

    # ---- render ----------------------------------------------------------------------------------
    def _apply_template(self, messages: Sequence[Message]) -> str:
        if self.config.chat_template is not None:
            return render_chat(self.config.chat_template, messages, owner=self._info.name,
                               bos_token=self.config.bos_token, eos_token=self.config.eos_token)
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        methods = ("apply-template", "tokenize") if self._render_via is None else (self._render_via,)
        for method in methods:
            if method == "none":
                break
            try:
                text = self._render_apply_template(msgs) if method == "apply-template" else self._render_tokenize(msgs)
            except BackendHTTPError as exc:
                if exc.status_code in _ABSENT and self._render_via is None:
                    continue
                raise
            self._render_via = method
            return text
        self._render_via = "none"
        raise UnsupportedError(
            f"{self._info.name}: the server at {self._http.root} cannot apply the chat template (tried POST "
            "/apply-template and POST /tokenize with messages): set chat_template in the config"
        )

    def _render_apply_template(self, msgs: list[dict[str, str]]) -> str:
        data = self._http.post_json("/apply-template", {"messages": msgs}, root=True)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise BackendProtocolError(f"{self._info.name}: /apply-template answered without a prompt")
        return prompt

    def _render_tokenize(self, msgs: list[dict[str, str]]) -> str:
        model = self.config.model
        data = self._http.post_json(
            "/tokenize",
            {"model": model, "messages": msgs, "add_generation_prompt": True, "add_special_tokens": False},
            root=True,
        )
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise BackendProtocolError(f"{self._info.name}: /tokenize answered without tokens")
        out = self._http.post_json("/detokenize", {"model": model, "tokens": tokens}, root=True)
        prompt = out.get("prompt")
        if not isinstance(prompt, str):
            raise BackendProtocolError(f"{self._info.name}: /detokenize answered without a prompt")
        return prompt
