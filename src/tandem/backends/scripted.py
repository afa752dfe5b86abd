"""A deterministic backend that writes scripted replies: for tests, examples and overhead benchmarks.

It behaves like an engine with a one-sequence prefix cache: `score` and `stream` report which
prompt tokens they really computed, and every token it yields or stops yielding is recorded, so a
test can check that cancelling a stream really stopped it.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field

from ..errors import BackendError
from ..types import (
    BackendBase,
    Capabilities,
    GenerationRequest,
    ModelInfo,
    Prompt,
    ScoreResult,
    TokenStep,
    TokenStream,
    Usage,
)

_TOKEN = re.compile(r"\s*\S+|\s+")
Reply = str | Mapping[str, str] | Callable[[Prompt, str], str]


def tokenize(text: str) -> list[str]:
    """Whitespace-attached word tokens; joining them gives the text back."""
    return _TOKEN.findall(text)


def _pseudo_logprob(context_len: int, tok: str) -> float:
    h = hashlib.sha256(f"{context_len}:{tok}".encode()).digest()
    return -3.0 * h[0] / 255.0


@dataclass
class ScriptedStats:
    streams_started: int = 0
    streams_cancelled: int = 0
    tokens_yielded: int = 0
    prompts: list[str] = field(default_factory=list)


class ScriptedBackend(BackendBase):
    """`reply`: a fixed text, a mapping {substring of the rendered prompt: reply}, or a function
    (prompt, rendered_text) -> reply. The reply continues the prompt's assistant prefix."""

    def __init__(
        self,
        reply: Reply,
        *,
        name: str = "scripted",
        n_params: int = 1_000_000,
        n_ctx: int = 8192,
        token_delay_s: float = 0.0,
        tokenizer_id: str = "scripted-words",
        fail_after: int | None = None,
        max_in_flight: int | None = 1,
    ) -> None:
        self._reply = reply
        self.max_in_flight = max_in_flight  # None: take concurrent calls (its cache accounting is then approximate)
        self._info = ModelInfo(
            name=name,
            n_params=n_params,
            n_ctx=n_ctx,
            tokenizer_id=tokenizer_id,
            chat_template_id="scripted-v1",
            capabilities=Capabilities(stream_logprobs=True, entropy="exact", score=True, raw_prompt=True),
        )
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after
        self.stats = ScriptedStats()
        self._cache: list[str] = []
        self._last_common = 0

    @property
    def info(self) -> ModelInfo:
        return self._info

    def render(self, prompt: Prompt) -> str:
        parts = [f"<|{m.role}|>\n{m.content}\n" for m in prompt.messages]
        return "".join(parts) + "<|assistant|>\n" + prompt.assistant_prefix

    def _reply_for(self, prompt: Prompt, text: str) -> str:
        r = self._reply
        if isinstance(r, str):
            return r
        if callable(r):
            return r(prompt, text)
        for key, value in r.items():
            if key in text:
                return value
        raise BackendError(f"scripted backend {self._info.name!r} has no reply for this prompt")

    def _advance_cache(self, tokens: list[str]) -> int:
        """Make `tokens` the cached sequence; return how many had to be computed."""
        common = 0
        for a, b in zip(self._cache, tokens, strict=False):
            if a != b:
                break
            common += 1
        self._cache = list(tokens)
        self._last_common = common
        return len(tokens) - common

    def close(self) -> None:
        self._cache = []

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)

    def reset_cache(self) -> None:
        self._cache = []

    def score(self, text: str) -> ScoreResult:
        toks = tokenize(text)
        # like the embedded engine, re-read the token before the reused prefix (its logits are not kept)
        computed = min(len(toks), self._advance_cache(toks) + (1 if self._last_common > 0 else 0))
        steps, offsets, pos = [], [], 0
        for i, t in enumerate(toks):
            lp = None if i == 0 else _pseudo_logprob(i, t)
            steps.append(TokenStep(text=t, logprob=lp, entropy=None if lp is None else -lp / 2 + 0.1))
            offsets.append(pos)
            pos += len(t)
        usage = Usage(len(toks), computed, len(toks) - computed, 0, 0.0)
        return ScoreResult(steps=steps, offsets=offsets, usage=usage)

    def stream(self, request: GenerationRequest) -> TokenStream:
        text = self.render(request.prompt)
        self.stats.prompts.append(text)
        prompt_toks = tokenize(text)
        reply = self._reply_for(request.prompt, text)
        usage = Usage(prompt_tokens=len(prompt_toks))
        stream = TokenStream(self._generate(prompt_toks, reply, request, usage), usage)
        self.stats.streams_started += 1
        return stream

    def _generate(
        self, prompt_toks: list[str], reply: str, request: GenerationRequest, usage: Usage
    ) -> Generator[TokenStep, None, str]:
        computed = self._advance_cache(prompt_toks)
        usage.computed_prompt_tokens = computed
        usage.cached_prompt_tokens = len(prompt_toks) - computed
        out = tokenize(reply)
        produced: list[str] = []
        finish = "length" if len(out) > request.max_tokens else "stop"
        try:
            for i, tok in enumerate(out[: request.max_tokens]):
                if self.fail_after is not None and i >= self.fail_after:
                    raise BackendError(f"scripted backend {self._info.name!r} failed mid-stream")
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                if any(s in "".join(produced) + tok for s in request.stop if s):
                    finish = "stop"
                    break
                lp = _pseudo_logprob(len(prompt_toks) + i, tok)
                produced.append(tok)
                usage.generated_tokens += 1
                self.stats.tokens_yielded += 1
                yield TokenStep(text=tok, logprob=lp, entropy=max(0.0, -lp / 2 + 0.1 * math.cos(i)))
        except GeneratorExit:
            self.stats.streams_cancelled += 1
            raise
        finally:
            self._cache = prompt_toks + produced
        return finish
