"""Streaming segmentation of the LLM's text into insight units.

Hint mode: one unit per non-empty line, tagged with the GPRA heading it sits under.
Continue mode: one unit per reasoning step (text up to a line break or a sentence end).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GPRA_KINDS = ("goal", "planning", "retrieval", "action")
_HEADING = re.compile(r"^\s*(?:[#*\-\d.\s]*)\**\s*(goal|plan(?:ning)?|retrieval|action)s?\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


@dataclass(frozen=True)
class InsightUnit:
    text: str
    kind: str | None  # one of GPRA_KINDS in hint mode, else None
    end_token: int  # LLM tokens generated when the unit closed


def gpra_kind(line: str) -> str | None:
    m = _HEADING.match(line)
    if not m:
        return None
    word = m.group(1).lower()
    return "planning" if word.startswith("plan") else word


class InsightSegmenter:
    """Feed token texts as they arrive; get completed insight units back."""

    def __init__(self, mode: str = "continue") -> None:
        self.mode = mode
        self._buf = ""
        self._kind: str | None = None
        self.units: list[InsightUnit] = []

    def feed(self, text: str, n_tokens: int) -> list[InsightUnit]:
        """Add one token's text; `n_tokens` is the LLM's generated-token count so far."""
        self._buf += text
        done: list[InsightUnit] = []
        while True:
            cut = self._boundary(self._buf)
            if cut is None:
                break
            piece, self._buf = self._buf[:cut], self._buf[cut:]
            unit = self._make(piece, n_tokens)
            if unit is not None:
                done.append(unit)
        self.units.extend(done)
        return done

    def flush(self, n_tokens: int) -> list[InsightUnit]:
        """Close the pending text as a unit (end of stream)."""
        piece, self._buf = self._buf, ""
        unit = self._make(piece, n_tokens)
        if unit is None:
            return []
        self.units.append(unit)
        return [unit]

    @property
    def pending(self) -> str:
        return self._buf

    def _boundary(self, buf: str) -> int | None:
        nl = buf.find("\n")
        if self.mode == "hint":
            return nl + 1 if nl >= 0 else None
        m = _SENTENCE_END.search(buf)
        candidates = [i for i in (nl + 1 if nl >= 0 else None, m.end() if m else None) if i is not None]
        if not candidates:
            return None
        cut = min(candidates)
        # a sentence end only counts once the whitespace after it has arrived
        return cut

    def _make(self, piece: str, n_tokens: int) -> InsightUnit | None:
        if not piece.strip():
            return None
        kind = None
        if self.mode == "hint":
            heading = gpra_kind(piece)
            if heading is not None:
                self._kind = heading
            kind = self._kind
        return InsightUnit(text=piece, kind=kind, end_token=n_tokens)
