"""Tokenizers that work without a model's weights: for counting and replaying recorded text.

A recorded LLM output is text; to stream it as an engine would, tandem cuts it into the tokens the
recording model used. For the Qwen family (Qwen2.5, QwQ, DeepSeek-R1-Distill-Qwen) the embedded
Qwen GGUF's vocabulary gives the same ids for plain text, so its tokenizer is loaded on its own
(`vocab_only`: no weights, well under a second).
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from .llamacpp import engine_errors

__all__ = ["GGUFTokenizer", "Tokenizer", "WordTokenizer", "load_tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text to token ids and back, piece by piece."""

    name: str

    def encode(self, text: str) -> list[int]: ...

    def pieces(self, ids: list[int]) -> list[str]:
        """The text of each token, in order; joined they give the decoded text (a character split
        across tokens lands on the token that completes it)."""
        ...


class GGUFTokenizer:
    """The tokenizer of a GGUF file, loaded without its weights. llama-cpp-python's exceptions are
    translated as the embedded backend translates them (`llamacpp.engine_errors`)."""

    def __init__(self, path: str | Path, name: str = "") -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("a GGUF tokenizer needs llama-cpp-python: install tandem[llamacpp]") from exc
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"tokenizer file not found: {self.path}")
        with engine_errors("load", str(self.path)):
            self._llama = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        self.name = name or self.path.stem

    def encode(self, text: str) -> list[int]:
        with engine_errors("tokenize a text", self.name):
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def pieces(self, ids: list[int]) -> list[str]:
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = [dec.decode(bytes(self._llama.detokenize([i], special=False))) for i in ids]
        tail = dec.decode(b"", final=True)
        if tail and out:
            out[-1] += tail
        return out


_WORD = re.compile(r"\s*\S+|\s+")


class WordTokenizer:
    """Whitespace-attached words as tokens (ids are positions in a growing vocabulary): for tests and
    for recordings of models whose tokenizer is not at hand, stated as an approximation."""

    name = "words"

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {}
        self._words: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in _WORD.findall(text):
            if w not in self._vocab:
                self._vocab[w] = len(self._words)
                self._words.append(w)
            ids.append(self._vocab[w])
        return ids

    def pieces(self, ids: list[int]) -> list[str]:
        return [self._words[i] for i in ids]


def load_tokenizer(name: str, models_dir: str | None = None) -> Tokenizer:
    """`words`, or a registered embedded model's name or a GGUF path (its tokenizer alone)."""
    if name == "words":
        return WordTokenizer()
    from ..models import resolve_model, spec_for_path

    path = resolve_model(name, models_dir)
    spec = spec_for_path(path, models_dir)
    return GGUFTokenizer(path, name=spec.name if spec else path.stem)
