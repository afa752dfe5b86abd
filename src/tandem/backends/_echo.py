"""Scoring a text over an OpenAI-compatible completions API, from the server's echo.

`POST /v1/completions` with `prompt=text, echo=true, logprobs=k` (and, when configured, vLLM's
`prompt_logprobs=k`), then either the echoed `choices[0].logprobs` or vLLM's
`choices[0].prompt_logprobs` is parsed. Servers get echo wrong in ways that give plausible but
meaningless numbers, so unless the answer carries `prompt_logprobs` (vLLM, whose echo is right),
`score_check` verifies it before trusting it:

- the echoed token texts must reproduce the scored text at their offsets (llama-cpp-python's
  server drops special tokens such as `<|im_start|>` from its echo and shifts the offsets);
- the echo must be aligned: a second, non-echo request (`max_tokens=1`) gives the distribution
  after the whole text; if the echo reports that very distribution for the text's *last* token,
  every log-prob is one position off. llama-cpp-python 0.3.36's server does exactly this for any
  text that does not begin with the model's BOS token (all of SmolLM2 and the Qwen models here
  add no BOS): the log-prob it reports for token i is that of token i under the distribution
  *after* token i (on SmolLM2 up to 16.6 nats from the embedded backend's value; its top-k for
  token i match the embedded log-prob of token i + 1 exactly).

A failed check raises `UnsupportedError` instead of returning wrong numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import BackendProtocolError, UnsupportedError
from ..types import ScoreResult, TokenStep, Usage
from ._http import HttpClient, score_cap
from ._wire import Entry, apply_usage, completion_entries, cumulative, num

ALIGN_TOL = 0.3  # nats: batched and one-token decoding differ by up to ~0.1 on quantised models


class EchoScorer:
    """Scores texts with `model` on the server behind `http`; `merge` adds the config's extra body
    fields to a request."""

    def __init__(self, http: HttpClient, *, model: str, top_logprobs: int, max_tokens: int, prompt_logprobs: bool,
                 check: bool, merge: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.http, self.model, self.merge = http, model, merge
        self.k = max(1, top_logprobs)
        self.max_tokens, self.prompt_logprobs, self.check = max_tokens, prompt_logprobs, check

    @property
    def name(self) -> str:
        return self.http.name

    def score(self, text: str) -> ScoreResult:
        """Per-token log-probs of `text`. `usage` is that of the echo request (its prompt tokens,
        cached ones when the server says, and the one token it had to generate); the check's second
        request is not counted."""
        k = self.k
        body: dict[str, Any] = {
            "model": self.model, "prompt": text, "max_tokens": self.max_tokens,
            "temperature": 0.0, "echo": True, "logprobs": k, "stream": False,
        }
        if self.prompt_logprobs:
            body["prompt_logprobs"] = k
        t0 = time.perf_counter()
        cap = score_cap(text, k, max_tokens=self.max_tokens, prompt_logprobs=self.prompt_logprobs)
        data = self.http.post_json("/completions", self.merge(body), cap=cap)
        with self.http.parsing("scoring answer"):
            choice = self._first_choice(data)
            usage = Usage()
            has_usage = apply_usage(usage, data.get("usage"))
            entries, offsets, trusted = self._entries(choice, text, usage.prompt_tokens if has_usage else None)
        if not entries:
            raise UnsupportedError(
                f"{self.name}: the server returned no log-probs for the prompt (no echo support)"
            )
        if self.check and not trusted:
            self._check_pieces(entries, offsets, text)
            self._check_alignment(entries, text)
        steps = [
            TokenStep(e.text, None if i == 0 else e.logprob, None if i == 0 else e.entropy())
            for i, e in enumerate(entries)
        ]
        if not has_usage:
            usage.prompt_tokens = usage.computed_prompt_tokens = len(entries)
        usage.seconds = time.perf_counter() - t0
        return ScoreResult(steps=steps, offsets=offsets, usage=usage)

    def _first_choice(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise BackendProtocolError(f"{self.name}: answer without choices")
        return choices[0]

    def _entries(self, choice: Mapping[str, Any], text: str, n_prompt: int | None) -> tuple[list[Entry], list[int], bool]:
        """The prompt's entries and their character offsets in `text`; True when the answer also
        carries vLLM's `prompt_logprobs` (a server known to align its echo correctly).

        A leading token that the text does not contain (a BOS the server added, e.g. vLLM's
        `<s>`) is kept, at offset 0, and the other offsets are moved back by its length."""
        lp = choice.get("logprobs")
        raw_prompt_lps = choice.get("prompt_logprobs")
        prompt_lps: list[Any] = raw_prompt_lps if isinstance(raw_prompt_lps, list) else []
        trusted = len(prompt_lps) > 0
        entries = completion_entries(lp)
        if not entries:
            entries = self._prompt_logprob_entries(prompt_lps, text) if trusted else []
            return entries, cumulative(entries), trusted
        raw_offsets = lp.get("text_offset") if isinstance(lp, Mapping) else None
        if isinstance(raw_offsets, list) and len(raw_offsets) == len(entries):
            offsets = [int(o) for o in raw_offsets]
        else:
            offsets = cumulative(entries)
        shift = 0
        first = entries[0].text
        if (len(entries) > 1 and first and not text.startswith(first) and offsets[1] == len(first)
                and text.startswith(entries[1].text)):
            shift = len(first)
            offsets = [0] + [o - shift for o in offsets[1:]]
        # drop the generated token(s), which servers echo too: vLLM gives one prompt_logprobs entry
        # per prompt token; otherwise by offset, never more than the prompt's token count
        if trusted:
            keep = len(prompt_lps)
        else:
            keep = sum(1 for i, o in enumerate(offsets) if o < len(text) or (i == 0 and shift))
            if n_prompt is not None:
                keep = min(keep, n_prompt)
        return entries[:keep], offsets[:keep], trusted

    def _prompt_logprob_entries(self, prompt_lps: list[Any], text: str) -> list[Entry]:
        """vLLM's `prompt_logprobs`: per position None (the first) or {token id: {logprob, rank,
        decoded_token}}, the prompt's own token first."""
        out: list[Entry] = []
        for item in prompt_lps:
            if item is None:
                out.append(Entry("", None, None))
                continue
            if not isinstance(item, Mapping) or not item:
                raise BackendProtocolError(f"{self.name}: malformed prompt_logprobs entry")
            vals = [v for v in item.values() if isinstance(v, Mapping)]
            if not vals:
                raise BackendProtocolError(f"{self.name}: malformed prompt_logprobs entry")
            own = vals[0]
            top = {str(v.get("decoded_token", i)): float(v["logprob"]) for i, v in enumerate(vals)}
            out.append(Entry(str(own.get("decoded_token", "")), num(own.get("logprob")), top))
        if out and out[0].text == "":  # the first token's text: what the others leave of the text
            rest = "".join(e.text for e in out[1:])
            if text.endswith(rest):
                out[0].text = text[: len(text) - len(rest)]
        return out

    def _check_pieces(self, entries: Sequence[Entry], offsets: Sequence[int], text: str) -> None:
        """The echoed tokens must sit where they say in the scored text."""
        last = -1
        bos = len(offsets) > 1 and offsets[1] == 0  # a leading token the text does not contain
        for i, (e, off) in enumerate(zip(entries, offsets, strict=True)):
            bad = off < last or off > len(text)
            if not bad and e.text and "\ufffd" not in e.text and not (i == 0 and bos):
                bad = text[off : off + len(e.text)] != e.text
            if bad:
                raise UnsupportedError(
                    f"{self.name}: the server's echoed tokens do not reproduce the scored text "
                    f"(token {e.text!r} at offset {off}); it may drop special tokens from its echo. "
                    "Its log-probs cannot be mapped to the text"
                )
            last = off
        end = offsets[-1] + len(entries[-1].text) if entries else 0
        if entries and end < len(text) and "\ufffd" not in entries[-1].text:
            raise UnsupportedError(
                f"{self.name}: the server's echoed tokens cover {end} of {len(text)} characters"
            )

    def _check_alignment(self, entries: Sequence[Entry], text: str) -> None:
        """Compare the distribution after the whole text (non-echo request) with the echo's entry
        for the text's last token: if they are the same distribution, the echo is one off."""
        k = self.k
        body = {
            "model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0,
            "logprobs": k, "stream": False,
        }
        data = self.http.post_json("/completions", self.merge(body))
        with self.http.parsing("answer after the text"):
            after = completion_entries(self._first_choice(data).get("logprobs"))
        if not after or not after[0].top:
            raise UnsupportedError(
                f"{self.name}: cannot verify the echo's alignment (no log-probs after the text); "
                "set score_check=False to trust the server"
            )
        last = entries[-1].top
        if last and same_distribution(after[0].top, last, k):
            raise UnsupportedError(
                f"{self.name}: the server's echo log-probs are one position off (each token is "
                "given the distribution that follows it; llama-cpp-python's server does this for "
                "texts that do not begin with a BOS token). Score with the embedded llama.cpp "
                "backend or a server that returns prompt log-probs (vLLM)"
            )


def same_distribution(a: Mapping[str, float], b: Mapping[str, float], k: int) -> bool:
    """Whether two top-k dictionaries describe the same distribution (up to decoding noise)."""
    top_a = sorted(a, key=lambda t: a[t], reverse=True)[:k]
    top_b = sorted(b, key=lambda t: b[t], reverse=True)[:k]
    if not top_a or not top_b or top_a[0] != top_b[0]:
        return False
    shared = [t for t in top_a if t in b]
    return len(shared) >= max(1, min(len(top_a), len(top_b)) - 1) and all(
        abs(a[t] - b[t]) <= ALIGN_TOL for t in shared
    )
