"""The OpenAI wire format: log-prob objects to token steps, streamed chunks, usage objects.

Pure functions over decoded JSON (no network). What does not have the expected shape raises
`BackendProtocolError`; a value that cannot be read (a string where a number belongs) raises the
plain `TypeError` / `ValueError` / `KeyError`, which the caller's `HttpClient.parsing` block
translates.

Entropy is estimated from the top-k log-probs the server returns (`Capabilities.entropy =
"topk"`): with p_1..p_k the top-k probabilities (plus the chosen token's, when it is not among
them), S their sum and r = 1 - S the leftover mass, the estimate is the entropy of the k + 1
buckets p_1..p_k, r, i.e. S * H(p / S) + h(S), the renormalised top-k entropy weighted by S plus
the binary entropy of "in the top-k or not". It is a lower bound of the true entropy (merging the
tail into one bucket removes its spread) and exact when the top-k hold all the mass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BackendProtocolError
from ..types import TokenStep, Usage


def topk_entropy(logprobs: Iterable[float | None]) -> float | None:
    """Entropy (nats) of the buckets `exp(lp)` for the given log-probs plus one bucket for the
    leftover mass: a lower bound of the full distribution's entropy (see the module docstring)."""
    ps = [math.exp(lp) for lp in logprobs if lp is not None and math.isfinite(lp)]
    if not ps:
        return None
    total = sum(ps)
    if total > 1.0:  # rounding on the server: renormalise
        ps = [p / total for p in ps]
        total = 1.0
    h = -sum(p * math.log(p) for p in ps if p > 0.0)
    rest = 1.0 - total
    if rest > 1e-12:
        h -= rest * math.log(rest)
    return max(0.0, h)


@dataclass
class Entry:
    """One token as an API reports it: text, log-prob, and the log-probs of the alternatives."""

    text: str
    logprob: float | None
    top: dict[str, float] | None  # completions form: {token text: logprob}
    top_list: list[float] | None = None  # chat form (token texts may repeat)

    def entropy(self) -> float | None:
        if self.top_list is not None:
            known = list(self.top_list)
            if self.logprob is not None and not any(abs(v - self.logprob) < 1e-9 for v in known):
                known.append(self.logprob)
            return topk_entropy(known) if self.top_list else None
        if not self.top:
            return None
        known = list(self.top.values())
        if self.logprob is not None and self.text not in self.top:
            known.append(self.logprob)
        return topk_entropy(known)


def num(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise BackendProtocolError(f"malformed log-probs: expected a number, got {x!r}")
    return float(x)


def completion_entries(lp: Any) -> list[Entry]:
    """Entries of a completions-style `logprobs` object (tokens / token_logprobs / top_logprobs)."""
    if not lp:
        return []
    if not isinstance(lp, Mapping):
        raise BackendProtocolError("malformed logprobs object")
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or [None] * len(tokens)
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    if not (len(tokens) == len(values) == len(tops)):
        raise BackendProtocolError("logprobs lists of different lengths")
    out = []
    for tok, val, top in zip(tokens, values, tops, strict=True):
        if not isinstance(tok, str) or (top is not None and not isinstance(top, Mapping)):
            raise BackendProtocolError("malformed logprobs entry")
        top_d = {str(k): float(v) for k, v in top.items() if v is not None} if top else None
        out.append(Entry(tok, num(val), top_d))
    return out


def chat_entries(lp: Any) -> list[Entry]:
    """Entries of a chat-style `logprobs` object (`content: [{token, logprob, top_logprobs}]`)."""
    if not lp:
        return []
    if not isinstance(lp, Mapping):
        raise BackendProtocolError("malformed logprobs object")
    out = []
    for item in lp.get("content") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("token"), str):
            raise BackendProtocolError("malformed logprobs entry")
        tops = [num(t.get("logprob")) for t in item.get("top_logprobs") or [] if isinstance(t, Mapping)]
        out.append(Entry(item["token"], num(item.get("logprob")), None, [t for t in tops if t is not None]))
    return out


def steps_for_chunk(text: str, entries: Sequence[Entry], *, with_entropy: bool = True) -> list[TokenStep]:
    """TokenSteps for one streamed chunk: one per token when the log-probs say which tokens the
    text is made of, else the text alone (log-prob unknown)."""
    if len(entries) == 1:
        e = entries[0]
        return [TokenStep(text, e.logprob, e.entropy() if with_entropy else None)]
    if entries and "".join(e.text for e in entries) == text:
        return [TokenStep(e.text, e.logprob, e.entropy() if with_entropy else None) for e in entries]
    return [TokenStep(text)] if text else []


def cumulative(entries: Sequence[Entry]) -> list[int]:
    offsets, pos = [], 0
    for e in entries:
        offsets.append(pos)
        pos += len(e.text)
    return offsets


def reasoning_tokens(u: Any) -> int:
    """`usage.completion_tokens_details.reasoning_tokens` (0 when absent)."""
    details = u.get("completion_tokens_details") if isinstance(u, Mapping) else None
    return max(0, int(details.get("reasoning_tokens") or 0)) if isinstance(details, Mapping) else 0


def apply_usage(usage: Usage, u: Any) -> bool:
    """Fill `usage` from an OpenAI `usage` object; False when there is none. Generated tokens are the
    completion tokens, which include the reasoning tokens as OpenAI, DeepSeek and vLLM count them; a
    server that counts them apart (reasoning tokens above the completion tokens) has them added."""
    if not isinstance(u, Mapping) or u.get("prompt_tokens") is None:
        return False
    pt = int(u["prompt_tokens"])
    ct = int(u.get("completion_tokens") or 0)
    rt = reasoning_tokens(u)
    details = u.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
    cached = max(0, min(cached, pt))
    usage.prompt_tokens = pt
    usage.cached_prompt_tokens = cached
    usage.computed_prompt_tokens = pt - cached
    usage.generated_tokens = ct + rt if rt > ct else ct
    return True


THOUGHT_OPEN = "<think>\n"
THOUGHT_CLOSE = "\n</think>\n\n"
"""How a thought streamed in its own field is written into the text: `THOUGHT_CLOSE` (the pipeline's
`THINK_SEP`) where the stream turns from the thought to the answer, `THOUGHT_OPEN` before the thought
of a model that is not declared a reasoning one (whose prompt is not taken to open the thought)."""

Field = Literal["reasoning", "content", ""]


@dataclass
class Delta:
    """What one choice of a streamed chunk adds: its token steps, how many tokens the server says
    they are, and the finish reason when the choice ends here. `field` says where a chat delta's
    text came from: the thought's field (`reasoning` / `reasoning_content`), `content`, or none (no
    text); `entries` whether the server's log-probs said how many tokens it is."""

    steps: list[TokenStep]
    n_tokens: int
    finish: str | None = None
    field: Field = ""
    entries: bool = False

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.steps)


@dataclass
class Chunk:
    """One streamed chunk: the server's error message (an error event), or the deltas of choice 0."""

    error: str | None = None
    deltas: list[Delta] = field(default_factory=list)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BackendProtocolError("malformed stream chunk (text)")
    return value


def thought_text(delta: Mapping[str, Any]) -> str:
    """A chat delta's thought: `reasoning` (vLLM 0.32's reasoning parsers, OpenRouter), else
    `reasoning_content` (DeepSeek's API, older vLLM); a server that sends both sends one text twice."""
    text = _text(delta.get("reasoning"))
    return text or _text(delta.get("reasoning_content"))


def parse_chunk(chunk: Mapping[str, Any], *, chat: bool, with_entropy: bool) -> Chunk:
    """A decoded stream chunk of the chat API (`delta.content`, and the thought's field) or the
    completions API (`text`). A chat chunk with both a thought and content (where a server's parser
    turns from one to the other) gives two deltas, the thought first, carrying the chunk's tokens."""
    if chunk.get("error"):
        err = chunk["error"]
        return Chunk(error=str(err.get("message", err) if isinstance(err, Mapping) else err))
    out = Chunk()
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
            continue
        finish = str(choice["finish_reason"]) if choice.get("finish_reason") else None
        if not chat:
            text = _text(choice.get("text"))
            entries = completion_entries(choice.get("logprobs"))
            steps = steps_for_chunk(text, entries, with_entropy=with_entropy)
            out.deltas.append(Delta(steps, len(entries) or len(steps), finish, "", bool(entries)))
            continue
        delta = choice.get("delta") or {}
        if not isinstance(delta, Mapping):
            raise BackendProtocolError("malformed stream chunk (delta)")
        thought, content = thought_text(delta), _text(delta.get("content"))
        entries = chat_entries(choice.get("logprobs"))
        if thought and content:
            lead = entries[0] if len(entries) == 1 else None
            first = TokenStep(thought, lead.logprob if lead else None,
                              lead.entropy() if lead and with_entropy else None)
            out.deltas.append(Delta([first], len(entries) or 1, None, "reasoning", bool(entries)))
            out.deltas.append(Delta([TokenStep(content)], 0 if entries else 1, finish, "content", bool(entries)))
            continue
        text = thought or content
        steps = steps_for_chunk(text, entries, with_entropy=with_entropy)
        kind: Field = "reasoning" if thought else "content" if content else ""
        out.deltas.append(Delta(steps, len(entries) or len(steps), finish, kind, bool(entries)))
    return out


def _prefixed(steps: list[TokenStep], text: str) -> list[TokenStep]:
    first = steps[0]
    return [TokenStep(text + first.text, first.logprob, first.entropy, first.token_id), *steps[1:]]


class ThoughtFields:
    """A chat stream whose thought comes in its own field, written as tandem's text: the thought as
    it streams, then `THOUGHT_CLOSE` on the first answer token (in the same step, so that every step
    is still one token or chunk of the server's), then the answer.

    `declared`: the model is declared a reasoning one (`reasoning = true`): its text is taken to start
    inside the thought, and an answer that comes without any thought before it (a thought the server
    hides, or an empty one) still gets `THOUGHT_CLOSE` before it. An undeclared model's thought is
    written between `THOUGHT_OPEN` and `THOUGHT_CLOSE`, so that it is neither lost nor read as the
    answer. A thought that comes after the answer began is written as answer text.
    """

    def __init__(self, declared: bool) -> None:
        self.declared = declared
        self.state: Literal["start", "thought", "answer"] = "start"
        self.thought_chars = 0  # characters of thought the server streamed

    def mark(self, delta: Delta) -> list[TokenStep]:
        steps = delta.steps
        if not steps or not delta.field or self.state == "answer":
            return steps
        if delta.field == "reasoning":
            opening = self.state == "start" and not self.declared
            self.state = "thought"
            self.thought_chars += len(delta.text)
            return _prefixed(steps, THOUGHT_OPEN) if opening else steps
        closing = self.state == "thought" or self.declared
        self.state = "answer"
        return _prefixed(steps, THOUGHT_CLOSE) if closing else steps
