"""Configuration: pydantic models that reject unknown keys, loaded from TOML or YAML.

Defaults live here and only here; the CLI and the server read them from these models.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_LLM = "qwen2.5-coder-1.5b"
DEFAULT_SLM = "qwen2.5-coder-0.5b"

# Backend defaults: `BackendSettings` below and the backends' own config classes (`OpenAIBackendConfig`,
# `LlamaCppConfig`, `RecordedConfig`) all take them from here.
DEFAULT_N_CTX = 4096
DEFAULT_N_THREADS = 0  # all cores
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_MIN_TOKENS_PER_S = 1.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.5
DEFAULT_TOP_LOGPROBS = 5
DEFAULT_TOKENIZER = DEFAULT_SLM  # recorded outputs are cut into tokens with this model's tokenizer


class StrictModel(BaseModel):
    """The base of tandem's pydantic models: an unknown key or field is an error, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendSettings(StrictModel):
    """One model: embedded GGUF (`llamacpp`), an OpenAI-compatible endpoint (`openai`), `scripted`, or
    recorded outputs replayed (`recorded`: `model` is the recordings file)."""

    kind: Literal["llamacpp", "openai", "scripted", "recorded"] = "llamacpp"
    model: str = Field(description="registry name or GGUF path (llamacpp); served model name (openai); "
                       "recordings JSONL file (recorded)")
    base_url: str | None = None
    api_key_env: str | None = None
    api: Literal["completions", "chat"] = "completions"
    n_params: int | None = Field(default=None, ge=1, description="parameters, for FLOPs (openai: required)")
    n_ctx: int = Field(default=DEFAULT_N_CTX, ge=1)
    n_threads: int = Field(default=DEFAULT_N_THREADS, ge=0, description="0: all cores")
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="openai: longest wait for the answer's "
                             "headers and first token, or for a whole non-streamed answer")
    idle_timeout_s: float | None = Field(default=None, gt=0, description="openai: longest wait between two "
                                         "streamed tokens (keep-alive comments do not count); unset: timeout_s")
    min_tokens_per_s: float = Field(default=DEFAULT_MIN_TOKENS_PER_S, gt=0, description="openai: a stream must "
                                    "end within timeout_s + max_tokens / min_tokens_per_s")
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    max_in_flight: int | None = Field(default=None, ge=1, description="calls this model takes at once: openai: "
                                      "the engine's own bound (e.g. vLLM's max_num_seqs; unset: none of its own); "
                                      "scripted: default 1; llamacpp: one, always")
    top_logprobs: int = Field(default=DEFAULT_TOP_LOGPROBS, ge=0)
    tokenizer_id: str = ""
    chat_template_id: str = ""
    chat_template: str | None = Field(default=None, description="llamacpp: a jinja2 chat template replacing "
                                      "the GGUF's; one that opens <think> in the prompt makes a reasoning LLM")
    price_input_per_mtok: float = Field(default=0.0, ge=0)
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    reply: str | None = Field(default=None, description="scripted backend: the reply text")
    token_delay_s: float = Field(default=0.0, ge=0.0, description="scripted backend: seconds per token")
    tokenizer: str = Field(default=DEFAULT_TOKENIZER, description="recorded: the tokenizer that cuts the "
                           "recorded text into tokens (an embedded model's name, a GGUF path, or 'words')")
    name: str | None = Field(default=None, description="recorded: the model's name (default: the recordings')")
    prompt_rule: str | None = Field(default=None, description="recorded: how prompt tokens are counted "
                                    "(chatml-think, deepseek-r1, question; default: by the model's name)")
    cap_tokens: int | None = Field(default=None, ge=1, description="recorded: a recording at least this "
                                   "many tokens long was cut by the limit it was recorded with (finish 'length')")
    tokens_per_second: float | None = Field(default=None, gt=0, description="recorded: pace the stream at "
                                            "this rate (modelled wall time); unset: wall time unknown")
    count_tokenizer: str | None = Field(default=None, description="openai: counts the generated tokens of a "
                                        "stream that reported neither usage nor log-probs (a name or path as "
                                        "tokenizer takes; unset: one a streamed chunk of text)")
    reasoning: bool = Field(default=False, description="openai: a reasoning model, its thought in the stream "
                            "(chat: a reasoning or reasoning_content field; completions: the raw text up to "
                            "</think>); docs/reasoning.md")
    # sampling (tandem.backends.sampling): this model's values for every request; unset: the pipeline's or the engine's
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="sampling temperature of this "
                                      "model (unset: the pipeline's)")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="0: no top-k cut")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, description="1.0: none (llama.cpp: repeat_penalty)")
    seed: int | None = Field(default=None, ge=0, description="added to the run's seed (the pipeline's, + i for "
                             "sample i of eval --samples)")
    stop: tuple[str, ...] = Field(default=(), description="stop sequences, beside the pipeline's")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="openai: merged last into the body of "
                                       "every generation request (not the fields the backend relies on)")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """Parsed now as the HTTP client will parse it, so that a malformed URL is a configuration error
        and not a failure of the first request."""
        if value is None:
            return value
        from urllib.parse import urlsplit

        import httpx

        try:
            parts = urlsplit(value)
            port = parts.port  # out of range: ValueError
            httpx.URL(value)
        except (ValueError, httpx.InvalidURL) as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0 or any(
                c.isspace() for c in parts.netloc):
            raise ValueError("must be an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")
        return value

    @model_validator(mode="after")
    def _check(self) -> BackendSettings:
        if self.kind == "openai":
            if not self.base_url:
                raise ValueError("an openai backend needs base_url")
            if not self.n_params:
                raise ValueError("an openai backend needs n_params (for honest FLOPs)")
        elif self.reasoning:
            raise ValueError(f"reasoning is an option of openai backends (a {self.kind} backend says itself "
                             "whether its model thinks)")
        if self.count_tokenizer and self.kind != "openai":
            raise ValueError("count_tokenizer counts an openai backend's streams (a recording's is tokenizer)")
        if self.extra_body and self.kind != "openai":
            raise ValueError("extra_body goes into HTTP requests: openai backends only")
        if self.chat_template is not None and self.kind != "llamacpp":
            raise ValueError("chat_template replaces an embedded llama.cpp model's template: llamacpp only")
        from .backends.sampling import Sampling  # no cycle: it imports only errors

        if self.kind == "recorded" and Sampling.from_settings(self).to_dict():
            raise ValueError("a recording is one draw: sampling settings do not apply to a recorded backend")
        try:
            Sampling.from_settings(self)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class PipelineSettings(StrictModel):
    task: Literal["math", "code"] = "math"
    handover: Literal["continue", "conclude", "hint"] = "continue"
    effort: Literal["low", "medium", "high"] = "medium"
    stage_budgets: tuple[int, ...] = Field(default=(32, 64, 128, 192, 256), min_length=1)
    max_unit_tokens: int = Field(default=32, ge=1)
    shadow: bool = True
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    seed: int = 0
    llm_max_tokens: int = Field(default=512, ge=1)
    slm_max_tokens: int = Field(default=512, ge=1)
    stop_at_answer: bool = Field(default=False, description="math: each model stops at the end of the line "
                                 "where its boxed answer closes (what follows is not graded)")
    effort_budgets: dict[Literal["low", "medium", "high"], int] | None = Field(
        default=None, description="each effort's largest budget: LLM tokens after which the next checkpoint "
        "hands over whatever the policy says (default: the classifier's, else 64 / 128 / 256)")
    prompts: str | None = Field(default=None, description="a TOML/YAML file of prompt wordings "
                                "(tandem.prompts.load_prompt_texts); its hash is the runs' prompt version")
    preset: Literal["reasoning"] | None = Field(
        default=None, description="defaults for a kind of LLM, under what the file and flags set "
        "(reasoning: REASONING_PRESET)")

    @field_validator("effort_budgets")
    @classmethod
    def _positive_effort_budgets(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(v < 1 for v in value.values()):
            raise ValueError("effort budgets must be positive token counts")
        return value

    @field_validator("stage_budgets")
    @classmethod
    def _positive_budgets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        """LLM token counts, as the server takes them: positive, in increasing order, each once."""
        if min(value) < 1:
            raise ValueError("stage budgets must be positive token counts")
        return tuple(sorted(set(value)))


class ServerSettings(StrictModel):
    """`tandem serve`: where it listens, who may call it, and the limits it enforces (docs/server.md)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env: str | None = Field(
        default=None, description="environment variable with the accepted API key(s), comma-separated; "
        "unset: no authentication")
    max_body_bytes: int = Field(default=1_048_576, ge=1, description="larger request bodies get 413")
    max_tokens_cap: int = Field(default=4096, ge=1, description="largest max_tokens a request may ask for")
    max_queue: int = Field(default=8, ge=1, description="requests waiting + running; beyond it 429")
    max_in_flight: int = Field(default=4, ge=1, description="pipelines running at once, at most; each model's "
                               "own limit bounds it too (an embedded llama.cpp model takes one call at a time, "
                               "so a server with one runs one pipeline at a time)")
    request_timeout_s: float = Field(default=600.0, gt=0, description="from admission to the last byte; 504")
    body_timeout_s: float = Field(default=30.0, gt=0, description="the request body must arrive within this; "
                                  "408 and the connection closed")
    stuck_grace_s: float = Field(default=30.0, ge=0, description="a run whose worker has not returned this long "
                                 "after its deadline or cancellation is stuck: /health says 503 degraded")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="in-flight requests may finish this long")
    fallback: Literal["slm", "llm"] | None = Field(
        default=None, description="after a backend failure, retry once with this model alone")
    compare_estimate: float | None = Field(
        default=None, gt=0, description="LLM-alone tokens (prompt + generated) per request, for the "
        "FLOPs-relative-to-the-LLM-alone metric")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stream_keepalive_s: float | None = Field(
        default=None, gt=0, description="streamed requests: send the headers and the role chunk at once, then "
        "an SSE comment every this many seconds while no text comes (a thinking LLM can take minutes before "
        "its first answer text; proxies cut silent connections). Unset: the status line waits for the run's "
        "first text, so a run that fails first still gets its own status")
    reasoning_field: Literal["reasoning_content", "reasoning", "inline"] = Field(
        default="reasoning_content", description="where a reasoning LLM's thought goes: this field of the "
        "message / delta (vLLM's parsers and DeepSeek's API use reasoning_content; OpenRouter reasoning), or "
        "inline: in content between <think> tags")


class TandemSettings(StrictModel):
    llm: BackendSettings = BackendSettings(model=DEFAULT_LLM)
    slm: BackendSettings = BackendSettings(model=DEFAULT_SLM)
    pipeline: PipelineSettings = PipelineSettings()
    server: ServerSettings = ServerSettings()
    classifier: str = Field(
        default="default",
        description="'default' (the shipped classifier for the embedded pair, else budget), "
        "'budget', or a path to a classifier JSON file",
    )
    models_dir: str | None = None


REASONING_PRESET: dict[str, Any] = {
    "stage_budgets": (256, 512, 1024, 1536),
    "effort_budgets": {"low": 512, "medium": 1024, "high": 1536},
    "llm_max_tokens": 32768,
    "slm_max_tokens": 1024,
    "stop_at_answer": True,
}
"""`[pipeline] preset = "reasoning"`: budgets sized to LLMs that think for thousands of tokens
(docs/reasoning.md). Anything the file or the flags set wins over it."""

PRESETS = {"reasoning": REASONING_PRESET}


def read_settings_file(path: Path) -> dict[str, Any]:
    """A TOML or YAML file's mapping; every failure is one ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib
            return tomllib.loads(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: the top level must be a mapping")
            return data
    except ConfigError:
        raise
    except Exception as exc:  # parser errors differ by library; report them uniformly
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    raise ConfigError(f"{path}: use a .toml, .yaml or .yml file")


def format_validation_error(exc: ValidationError, source: str, what: str = "configuration", *,
                            limit: int | None = None) -> str:
    """One line naming every invalid key of `source` (a file, or "options"): "<source>: invalid <what>:
    a.b: unknown key; c: <pydantic's message>", the first `limit` of them when there are more."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    shown = "; ".join(parts[:limit])
    if limit is not None and len(parts) > limit:
        shown += f"; and {len(parts) - limit} more"
    return f"{source}: invalid {what}: {shown}"


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TandemSettings:
    """Settings from a file (optional) with `overrides` (nested dicts) applied on top."""
    data: dict[str, Any] = read_settings_file(Path(path)) if path else {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    pipeline = data.get("pipeline")
    if isinstance(pipeline, dict) and pipeline.get("preset") in PRESETS:
        data["pipeline"] = {**PRESETS[pipeline["preset"]], **pipeline}
    try:
        return TandemSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path) if path else "options")) from None
