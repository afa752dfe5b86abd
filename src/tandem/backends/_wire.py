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
from typing import Any

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


def apply_usage(usage: Usage, u: Any) -> bool:
    """Fill `usage` from an OpenAI `usage` object; False when there is none."""
    if not isinstance(u, Mapping) or u.get("prompt_tokens") is None:
        return False
    pt = int(u["prompt_tokens"])
    ct = int(u.get("completion_tokens") or 0)
    details = u.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, Mapping) else 0
    cached = max(0, min(cached, pt))
    usage.prompt_tokens = pt
    usage.cached_prompt_tokens = cached
    usage.computed_prompt_tokens = pt - cached
    usage.generated_tokens = ct
    return True


@dataclass
class Delta:
    """What one choice of a streamed chunk adds: its token steps, how many tokens the server says
    they are, and the finish reason when the choice ends here."""

    steps: list[TokenStep]
    n_tokens: int
    finish: str | None = None


@dataclass
class Chunk:
    """One streamed chunk: the server's error message (an error event), or the deltas of choice 0."""

    error: str | None = None
    deltas: list[Delta] = field(default_factory=list)


def parse_chunk(chunk: Mapping[str, Any], *, chat: bool, with_entropy: bool) -> Chunk:
    """A decoded stream chunk of the chat API (`delta.content`) or the completions API (`text`)."""
    if chunk.get("error"):
        err = chunk["error"]
        return Chunk(error=str(err.get("message", err) if isinstance(err, Mapping) else err))
    out = Chunk()
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
            continue
        if chat:
            delta = choice.get("delta") or {}
            text = (delta.get("content") or "") if isinstance(delta, Mapping) else ""
            entries = chat_entries(choice.get("logprobs"))
        else:
            text = choice.get("text") or ""
            entries = completion_entries(choice.get("logprobs"))
        if not isinstance(text, str):
            raise BackendProtocolError("malformed stream chunk (text)")
        steps = steps_for_chunk(text, entries, with_entropy=with_entropy)
        finish = str(choice["finish_reason"]) if choice.get("finish_reason") else None
        out.deltas.append(Delta(steps, len(entries) or len(steps), finish))
    return out
