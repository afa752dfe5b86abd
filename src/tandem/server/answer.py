"""The answer text one request returns, streamed or not.

`AnswerText` owns the rule that what a client gets is the run's final text cut at its first stop
sequence: a stream sends the run's answer deltas as they come (holding back what could still start
a stop sequence) and, once the run has ended, whatever of the final text the deltas did not carry;
a non-streamed request takes the final text at once. Either way the text sent is
`final[:find_stop(final, stops)]`, or the stream fails (`StreamDiverged`) rather than finish with a
text that is not the answer.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where to cut `text`: the start of the stop sequence whose first occurrence ends first (the one
    a generator would meet first), or None."""
    best: tuple[int, int] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or (i + len(s), i) < best):
            best = (i + len(s), i)
    return None if best is None else best[1]


class StopScanner:
    """Applies stop sequences to streamed text: holds back what could still start a stop sequence, so
    the streamed text always equals `text[:find_stop(text, stops)]` of the whole."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""
        self.hit: str | None = None

    def feed(self, text: str) -> str:
        if self.hit is not None:
            return ""
        if not self.stops:
            return text
        self.buf += text
        cut = find_stop(self.buf, self.stops)
        if cut is not None:
            self.hit = next(s for s in self.stops if self.buf.find(s) == cut)
            out, self.buf = self.buf[:cut], ""
            return out
        n = len(self.buf) - self.hold
        if n <= 0:
            return ""
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit is not None else self.buf), ""
        return out


class StreamDiverged(Exception):
    """The run's final text does not continue the text its deltas already gave the client."""


class AnswerText:
    """The answer of one run as its client gets it.

    `feed` each answer delta of a streamed run as it arrives and send what it returns; once the run has
    ended, `finish` with its final text and send the pieces it returns. A non-streamed request only
    calls `finish`. `text` is everything given out, `stop_hit` the stop sequence that cut it. A run
    that fails is simply not finished: what was held back for a possible stop sequence is never sent.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._scanner = StopScanner(stops)
        self._received: list[str] = []  # every delta fed, as the run emitted it
        self._given: list[str] = []
        self.finished = False
        self.diverged = False

    @property
    def text(self) -> str:
        return "".join(self._given)

    @property
    def stop_hit(self) -> str | None:
        return self._scanner.hit

    def feed(self, delta: str) -> str:
        """The text to send for this answer delta ("" while it may still start a stop sequence)."""
        if self.finished or self.diverged:
            return ""
        self._received.append(delta)
        return self._give(self._scanner.feed(delta))

    def finish(self, final: str) -> list[str]:
        """The rest of the answer once the run ended with `final` as its text: the part of `final` the
        deltas did not carry, then what was held back, each only when not empty. Raises StreamDiverged
        when `final` does not start with the deltas fed (the client already has text that is not the
        answer), after which nothing more is given out."""
        if self.finished or self.diverged:
            raise RuntimeError("the answer was already finished")
        received = "".join(self._received)
        pieces = []
        if final != received:
            if not final.startswith(received):
                self.diverged = True
                raise StreamDiverged(f"the final text ({len(final)} characters) does not continue the "
                                     f"{len(received)} characters streamed")
            pieces.append(self._give(self._scanner.feed(final[len(received):])))
        pieces.append(self._give(self._scanner.flush()))
        self.finished = True
        return [p for p in pieces if p]

    def _give(self, out: str) -> str:
        if out:
            self._given.append(out)
        return out
