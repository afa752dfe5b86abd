"""Core data types and the `Protocol` of every pluggable part.

Kept dependency-free so that any module (and any user extension) can import it cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]
EntropyKind = Literal["exact", "topk", "none"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Prompt:
    """A chat prompt, optionally with the start of the assistant's turn already written.

    `assistant_prefix` is what `continue` hand-over uses: the SLM continues the same assistant
    turn the LLM started.
    """

    messages: tuple[Message, ...]
    assistant_prefix: str = ""


@dataclass(frozen=True)
class TokenStep:
    """One token with what the model thought of it.

    `logprob` is the log-probability of this token given everything before it; `entropy` the
    entropy (nats) of the distribution it was drawn from. Either is None when unknown.
    """

    text: str
    logprob: float | None = None
    entropy: float | None = None
    token_id: int | None = None


@dataclass
class Usage:
    """Tokens one backend call really processed.

    `prompt_tokens` is the prompt's length; `computed_prompt_tokens` those evaluated by this call
    (the rest were already in a cache: `cached_prompt_tokens`).
    """

    prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Capabilities:
    stream_logprobs: bool = True
    entropy: EntropyKind = "exact"
    score: bool = False
    raw_prompt: bool = True
    replayed: bool = False  # the stream replays a recording: run stores keep offsets, never its text
    wall_time: Literal["measured", "modelled", "none"] = "measured"  # "none": a recording's time is unknown


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline and the cost model need to know about a model."""

    name: str
    n_params: int
    n_ctx: int
    tokenizer_id: str = ""
    chat_template_id: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    checksum: str = ""
    thinks: bool = False
    """A reasoning model whose prompt opens a thought: its output starts inside the thought and closes
    it with `</think>` before the answer."""
    sampling: dict[str, Any] = field(default_factory=dict, hash=False)
    """The sampling values the backend's settings fix for this model (`tandem.backends.sampling.Sampling`,
    only those set): part of a run's identity."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: Prompt
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0
    thought_handover: bool = False
    """The caller may hand this stream's thought to another model (a reasoning LLM in a tandem run): a
    backend that cannot show the thought (an endpoint that hides it) refuses instead of streaming."""
    sampling: tuple[tuple[str, Any], ...] = ()
    """This request's own sampling values (top_p, top_k, min_p, presence / frequency / repetition
    penalties), for what the model's role leaves unset (`tandem.backends.sampling.Sampling.resolve`)."""


@dataclass
class ScoreResult:
    """Per-token log-probs of a text appended to a model's context."""

    steps: list[TokenStep]
    offsets: list[int]  # character offset of each token in the scored text
    usage: Usage

    def after(self, char_offset: int) -> list[TokenStep]:
        """Steps of the tokens that start at or after `char_offset`."""
        return [s for s, o in zip(self.steps, self.offsets, strict=True) if o >= char_offset]


class TokenStream:
    """An iterator of `TokenStep`s that can be cancelled with `close()`.

    Wraps a backend generator; closing it raises GeneratorExit inside the generator, which is
    where a backend stops its computation (breaks out of the engine loop, closes the HTTP stream).
    `usage` and `finish_reason` are filled in by the backend as it goes.
    """

    def __init__(self, gen: Generator[TokenStep, None, str | None], usage: Usage) -> None:
        self._gen = gen
        self.usage = usage
        self.finish_reason: str | None = None
        self.cancelled = False
        self._closed = False
        self._start = time.perf_counter()

    def __iter__(self) -> Iterator[TokenStep]:
        return self

    def __next__(self) -> TokenStep:
        if self._closed:
            raise StopIteration
        try:
            return next(self._gen)
        except StopIteration as done:
            # a backend generator returns its finish reason ("stop", "length")
            self.finish_reason = done.value if isinstance(done.value, str) else "stop"
            self._finish()
            raise StopIteration from None

    def close(self) -> None:
        """Stop the stream now. Idempotent."""
        if self._closed:
            return
        if self.finish_reason is None:
            self.cancelled = True
            self.finish_reason = "cancelled"
        self._gen.close()
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self.usage.seconds = time.perf_counter() - self._start

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class Backend(Protocol):
    """An inference engine serving one model."""

    @property
    def info(self) -> ModelInfo: ...

    def render(self, prompt: Prompt) -> str:
        """The raw text the model sees for `prompt` (chat template applied, assistant turn opened
        and `assistant_prefix` appended). Raises UnsupportedError on chat-only backends."""
        ...

    def stream(self, request: GenerationRequest) -> TokenStream:
        """Generate from `request.prompt`, one token at a time."""
        ...

    def score(self, text: str) -> ScoreResult:
        """Append raw `text` to the model's context (reusing any cached prefix) and return the
        per-token log-probs and entropies. Raises UnsupportedError where the backend cannot."""
        ...

    def close(self) -> None: ...


class BackendBase:
    """The optional members of a `Backend`, with their defaults. The project's backends inherit it;
    a backend that implements only the `Backend` Protocol gets the same defaults from the helpers of
    `tandem.capabilities`, which is how callers read these members."""

    max_in_flight: int | None = 1
    """Calls the backend takes at once; None: no limit of its own (a server that batches)."""

    def reset_cache(self) -> None:
        """Forget any cached prompt state (a cold start, for fair measurements). Default: none kept."""

    def tokenize(self, text: str) -> list[Any] | None:
        """The tokens of `text` as the model sees them (ids or pieces); None: it cannot say."""
        return None


class StopPolicy(Protocol):
    """Probability that the insights seen so far suffice for the SLM."""

    name: str

    def sufficiency(self, features: dict[str, float]) -> float: ...


class PolicyBase:
    """The optional members of a `StopPolicy`, with their defaults (see `BackendBase`)."""

    uses_shadow: bool = True
    """Whether the policy reads the SLM's shadow features (False: the pipeline skips scoring)."""
    uses_trial: bool = False
    """Whether the policy reads trial answers (the pipeline then asks for them at every checkpoint)."""

    @property
    def route_threshold(self) -> float | None:
        """A calibrated threshold for the `route` method; None: use the effort's checkpoint-0 one."""
        return None

    @property
    def cascade_threshold(self) -> float | None:
        """A calibrated threshold (mean log-prob) for the `cascade` method; None: none calibrated."""
        return None


@dataclass(frozen=True)
class Extraction:
    """The final answer pulled out of a model's text, and which rule found it."""

    answer: str | None
    rule: str  # "boxed", "answer_is", "last_number", "code_fence", "raw", "none"


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str = ""
    task: Literal["math", "code"] = "math"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str = ""
    extraction: Extraction | None = None


class Grader(Protocol):
    def __call__(self, problem: Problem, text: str) -> Grade: ...


class Dataset(Protocol):
    name: str

    def __iter__(self) -> Iterator[Problem]: ...

    def __len__(self) -> int: ...


ProgressCallback = Callable[[str, dict[str, Any]], None]
"""Called by the pipeline with an event name and a payload (insight, checkpoint, handover, token)."""


def as_messages(pairs: Sequence[tuple[str, str]]) -> tuple[Message, ...]:
    return tuple(Message(role=r, content=c) for r, c in pairs)  # type: ignore[arg-type]
