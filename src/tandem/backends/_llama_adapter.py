"""The one place that touches llama-cpp-python's private attributes (pinned: 0.3.36).

Why: the public API cannot give per-token log-probs of a *given* text without `logits_all=True`
(10x slower generation, context x vocabulary floats), `echo=True` is off by one for models that
add no BOS, and `Llama.eval()` keeps no logits. This adapter instead

- scores text by decoding it in the model's own batch with every position flagged for logits,
  reading the rows from the context, and recording the tokens in `input_ids` / `n_tokens` so the
  high-level `generate` reuses that prefix (the hand-over computes no prompt token again);
- generates greedily through `Llama.generate` with a logits processor that computes the
  log-softmax and entropy of each step on the logits it is handed (and returns them unchanged);
- counts every token the engine really evaluates (wrapping `Llama.eval`), so cost is measured,
  not inferred.

`tests/test_llamacpp.py` checks it against the public API (fresh model, same text, same output).
"""

from __future__ import annotations

import codecs
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ContextOverflow
from ..types import Usage

SCORE_CHUNK = 64  # rows of logits held at once while scoring (64 x vocab floats)


def row_stats(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a (rows, vocab) float32 array: the shifted logits z = x - max, log-sum-exp of z,
    and the entropy (nats). log p(token) = z[token] - lse. float32 throughout: 20x faster than
    float64 and within 1e-5 of it."""
    x = np.asarray(logits, dtype=np.float32)
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1)
    lse = np.log(s)
    ent = lse - (e * z).sum(axis=1) / s
    return z, lse, ent


@dataclass
class GeneratedToken:
    token_id: int
    text: str
    logprob: float
    entropy: float


class LlamaAdapter:
    """Wraps one `llama_cpp.Llama`; keeps per-position log-prob records beside its KV cache."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        # llama.cpp pads the context to a multiple of 256 and reports that; llama-cpp-python's token
        # record (`input_ids`) has the size asked for. Positions past the smaller do not exist.
        self.n_ctx = n_ctx = min(int(llama.n_ctx()), len(llama.input_ids))
        self._lp = np.full(n_ctx + 1, np.nan)
        self._ent = np.full(n_ctx + 1, np.nan)
        self._has = np.zeros(n_ctx + 1, dtype=bool)  # records valid for position i (token i)
        self.evaluated = 0  # tokens the engine evaluated through Llama.eval
        original_eval = llama.eval

        def counting_eval(tokens: Sequence[int]) -> None:
            self.evaluated += len(tokens)
            original_eval(tokens)

        llama.eval = counting_eval  # instance attribute: Llama.generate calls self.eval

    def forget(self) -> None:
        self._has[:] = False

    # ---- tokens --------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Raises UnicodeEncodeError for text UTF-8 cannot encode (lone surrogates): the backend
        translates it."""
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def cached_tokens(self) -> list[int]:
        return [int(t) for t in self.llama.input_ids[: self.llama.n_tokens]]

    def _common_prefix(self, tokens: Sequence[int]) -> int:
        cached = self.llama.input_ids[: self.llama.n_tokens]
        n = min(len(cached), len(tokens))
        if n == 0:
            return 0
        diff = np.nonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))[0]
        return int(diff[0]) if len(diff) else n

    def fit(self, n_tokens: int, what: str, *, generating: bool) -> None:
        """Refuse `n_tokens` that do not fit the context (leaving a position free for the first new
        token when `generating`), before any engine call: past the context's end llama.cpp fails in
        decode, or worse, with the cache half written."""
        n_ctx = self.n_ctx
        if n_tokens + generating > n_ctx:
            room = " and leave room for an answer" if generating else ""
            raise ContextOverflow(f"{what} has {n_tokens} tokens: too long to fit the model's context "
                                  f"of {n_ctx} tokens{room}")

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    # ---- scoring -------------------------------------------------------------------------------
    def score(self, text: str) -> tuple[list[int], np.ndarray, np.ndarray, int]:
        """Append `text` to the cache (reusing the longest prefix whose records are known).

        Returns (tokens, logprobs, entropies, computed): per token of `text`, the log-prob of it
        given the tokens before it and the entropy of that distribution (NaN for the first
        token), and how many tokens were evaluated by this call.
        """
        tokens = self.tokenize(text)
        self.fit(len(tokens), "the text to score", generating=False)
        reuse = self._common_prefix(tokens)
        # records must be known for every reused position (position 0 has none by nature)
        known = self._has[1:reuse]
        if len(known) and not known.all():
            reuse = 1 + int(np.argmin(known))
        # the row predicting tokens[reuse] was not kept: re-evaluate one token before it
        start = max(0, min(reuse, len(tokens)) - 1) if reuse > 0 else 0
        computed = self._decode_with_logits(tokens, start)
        lps = self._lp[: len(tokens)].copy()
        ents = self._ent[: len(tokens)].copy()
        lps[0] = ents[0] = np.nan
        return tokens, lps, ents, computed

    def _decode_with_logits(self, tokens: Sequence[int], start: int) -> int:
        ll = self.llama
        ctx, batch = ll._ctx, ll._batch
        ctx.kv_cache_seq_rm(-1, start, -1)
        ll.n_tokens = start
        self._has[start + 1 :] = False
        n_vocab = ll.n_vocab()
        chunk = min(SCORE_CHUNK, ll.n_batch)
        for i in range(start, len(tokens), chunk):
            part = list(tokens[i : i + chunk])
            batch.set_batch(batch=part, n_past=i, logits_all=True)
            ctx.decode(batch)
            rows = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(part) * n_vocab,)).reshape(
                len(part), n_vocab
            )
            z, lse, ent = row_stats(rows)
            # row j predicts token i + j + 1
            nxt = np.asarray(tokens[i + 1 : i + len(part) + 1], dtype=np.int64)
            k = len(nxt)
            self._lp[i + 1 : i + 1 + k] = z[np.arange(k), nxt] - lse[:k]
            self._ent[i + 1 : i + 1 + k] = ent[:k]
            self._has[i + 1 : i + 1 + k] = True
            ll.input_ids[i : i + len(part)] = part
            ll.n_tokens = i + len(part)
        # the last decode produced the logits of the last token: generate may sample at once
        ll._requires_eval = False
        self.evaluated += len(tokens) - start
        return len(tokens) - start

    # ---- generation ----------------------------------------------------------------------------
    def generate(
        self, tokens: Sequence[int], usage: Usage, *, max_tokens: int, temperature: float, seed: int,
        stop: Sequence[str] = (), top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
        repeat_penalty: float | None = None, presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
    ) -> Generator[GeneratedToken, None, str]:
        """Yield tokens generated after the prompt `tokens` and return the finish reason ("stop" or
        "length").

        Sampling values left None are off (no top-k / top-p / min-p cut, no penalty): greedy decoding
        at temperature 0, plain sampling from the softmax at temperature T otherwise. Penalties apply at
        temperature 0 too; log-probs and entropies are those of the model's own distribution, before
        any of them. `usage` is filled in as soon as the prompt is processed. Closing the generator
        stops the engine at once (no further decode).
        """
        ll = self.llama
        tokens = list(tokens)
        usage.prompt_tokens = len(tokens)
        self.fit(len(tokens), "the prompt", generating=True)
        max_tokens = min(max_tokens, self.n_ctx - len(tokens))
        last: dict[str, Any] = {}

        def processor(_ids: Any, logits: np.ndarray) -> np.ndarray:
            z, lse, ent = row_stats(np.asarray(logits)[None, :])
            last["z"], last["lse"], last["ent"] = z[0], float(lse[0]), float(ent[0])
            return logits

        if temperature > 0:
            ll.set_seed(seed)
        before = self.evaluated
        gen = ll.generate(
            tokens, temp=temperature, top_k=top_k if top_k is not None else (0 if temperature > 0 else 40),
            top_p=1.0 if top_p is None else top_p, min_p=0.0 if min_p is None else min_p,
            repeat_penalty=1.0 if repeat_penalty is None else repeat_penalty,
            presence_penalty=presence_penalty or 0.0, frequency_penalty=frequency_penalty or 0.0,
            logits_processor=[processor], reset=True,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        computed = -1
        text, finish, n = "", "length", 0
        try:
            for token in gen:
                if computed < 0:
                    computed = self.evaluated - before
                    usage.computed_prompt_tokens = computed
                    usage.cached_prompt_tokens = len(tokens) - computed
                if self.is_eog(token):
                    finish = "stop"
                    break
                pos = ll.n_tokens  # the sampled token will sit at this position
                lp, ent = float(last["z"][token]) - last["lse"], last["ent"]
                if pos < len(self._lp):
                    self._lp[pos], self._ent[pos], self._has[pos] = lp, ent, True
                piece = decoder.decode(ll.detokenize([token], special=False))
                text += piece
                n += 1
                usage.generated_tokens = n
                yield GeneratedToken(int(token), piece, lp, ent)
                if stop and any(s in text for s in stop):
                    finish = "stop"
                    break
                if n >= max_tokens:
                    break
        finally:
            gen.close()
            if computed > 0:  # the prompt tail generate evaluated without our logits has no records
                self._has[len(tokens) - computed : len(tokens)] = False
        return finish
