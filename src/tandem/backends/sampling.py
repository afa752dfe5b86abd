"""How one model samples its tokens: the values a role's settings fix (`[llm]` / `[slm]`), and how a
request resolves them.

A role's values apply to every request to that model; what the role leaves unset comes from the
request (the pipeline's `temperature` and `seed`) or is the engine's own default. The seed is the one
value that combines: a role's `seed` is added to the request's, so that `tandem eval --samples K`
(seed + i for sample i) still draws K different samples from a model whose seed is set. A role's
`stop` sequences are added to the request's.

Engines get the values under their own names: the OpenAI HTTP body (`http_fields`: OpenAI's names,
and `top_k`, `min_p`, `repetition_penalty` as vLLM and SGLang take them, then `extra_body` merged
last), llama.cpp's `generate` (`repeat_penalty` for `repetition_penalty`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import BackendSettings
    from ..types import GenerationRequest

__all__ = ["PROTECTED_FIELDS", "SAMPLING_KEYS", "Sampling"]

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "seed", "stop", "extra_body")
"""The sampling keys of a role's settings (and of `--llm-sampling` / `--slm-sampling`)."""

PROTECTED_FIELDS = frozenset({
    "model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "prompt", "messages", "logprobs",
    "top_logprobs", "echo", "prompt_logprobs", "continue_final_message", "add_generation_prompt", "n",
})
"""Fields of the HTTP body the backend relies on (what it streams, counts and checks): `extra_body`
cannot replace them."""

_OPTIONAL = ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass(frozen=True)
class Sampling:
    """A model's sampling values; None (or empty): not fixed by the role."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # 0: no top-k cut
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # 1.0: none (llama.cpp's repeat_penalty)
    seed: int | None = None  # added to the request's seed
    stop: tuple[str, ...] = ()
    extra_body: Mapping[str, Any] = field(default_factory=dict)  # HTTP backends only

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature is None or 0.0 <= self.temperature <= 2.0, "in [0, 2]"),
            ("top_p", self.top_p is None or 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", self.top_k is None or self.top_k >= 0, "0 (off) or more"),
            ("min_p", self.min_p is None or 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("presence_penalty", self.presence_penalty is None or -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
            ("frequency_penalty", self.frequency_penalty is None or -2.0 <= self.frequency_penalty <= 2.0,
             "in [-2, 2]"),
            ("repetition_penalty", self.repetition_penalty is None or self.repetition_penalty > 0.0, "positive"),
            ("seed", self.seed is None or self.seed >= 0, "0 or more"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "non-empty strings"),
        ]
        bad = [f"{name} must be {what}" for name, ok, what in checks if not ok]
        taken = sorted(PROTECTED_FIELDS & set(self.extra_body))
        if taken:
            bad.append(f"extra_body cannot set {', '.join(taken)} (the backend relies on them)")
        if bad:
            raise ConfigError("invalid sampling settings: " + "; ".join(bad))

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> Sampling:
        """The values a `[llm]` / `[slm]` section sets."""
        return cls(**{k: getattr(settings, k) for k in SAMPLING_KEYS if k not in ("stop", "extra_body")},
                   stop=tuple(settings.stop), extra_body=dict(settings.extra_body))

    def to_dict(self) -> dict[str, Any]:
        """The values set, JSON-ready (for manifests): empty when the role fixes nothing."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("stop", "extra_body") and not value):
                continue
            out[f.name] = list(value) if f.name == "stop" else dict(value) if f.name == "extra_body" else value
        return out

    def resolve(self, request: GenerationRequest) -> Sampling:
        """What a request to this model samples with: temperature and seed always set (see the module
        docstring), the request's stop sequences and the role's together, and the request's own values
        (`request.sampling`) where the role fixes none."""
        seed = request.seed + (self.seed or 0)
        stop = tuple(dict.fromkeys((*request.stop, *self.stop)))
        temperature = request.temperature if self.temperature is None else self.temperature
        asked = {k: v for k, v in request.sampling if k in _OPTIONAL and getattr(self, k) is None}
        return replace(self, temperature=temperature, seed=seed, stop=stop, **asked)

    def http_fields(self) -> dict[str, Any]:
        """The OpenAI-compatible body fields of a resolved sampling, `extra_body` merged last."""
        out: dict[str, Any] = {"temperature": self.temperature, "seed": self.seed}
        out.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        if self.stop:
            out["stop"] = list(self.stop)
        out.update(self.extra_body)
        return out
