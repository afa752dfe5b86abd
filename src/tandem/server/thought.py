"""A reasoning LLM's thought apart from the answer, for clients that read it in its own field.

A tandem text whose LLM reasons reads `<think>\\n` + the thought + `</think>` + the answer. The
server sends the thought as `reasoning_content` (or `reasoning`, by `server.reasoning_field`) and only
the answer as `content`, as vLLM's reasoning parsers and DeepSeek's API do; `inline` keeps the tags in
`content`. `split_thought` splits a whole text; `ThoughtSplitter` splits it as it streams, and the two
always agree.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>\n", "</think>"


def split_thought(text: str) -> tuple[str, str]:
    """(thought, answer) of a whole text: the thought is what follows `<think>\\n` up to `</think>`
    (all of it when the thought never closed), the answer what follows, without its leading newlines.
    A text that does not open a thought is all answer."""
    if not text.startswith(OPEN):
        return "", text
    body = text[len(OPEN):]
    i = body.find(CLOSE)
    if i < 0:
        return body, ""
    return body[:i], body[i + len(CLOSE):].lstrip("\n")


class ThoughtSplitter:
    """Feed a text's deltas in order; each call returns (thought piece, answer piece) ready to send.
    Text that could still be the start of `<think>\\n` or `</think>` is held back until it is known."""

    def __init__(self) -> None:
        self._state = "start"  # start -> thought -> answer, or start -> answer
        self._buf = ""

    def feed(self, delta: str) -> tuple[str, str]:
        self._buf += delta
        thought, answer = "", ""
        if self._state == "start":
            if len(self._buf) < len(OPEN) and OPEN.startswith(self._buf):
                return "", ""
            if self._buf.startswith(OPEN):
                self._state, self._buf = "thought", self._buf[len(OPEN):]
            else:
                self._state = "answer"
        if self._state == "thought":
            i = self._buf.find(CLOSE)
            if i < 0:
                keep = _partial_suffix(self._buf, CLOSE)
                thought, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                return thought, ""
            thought, self._buf = self._buf[:i], self._buf[i + len(CLOSE):]
            self._state = "lead"
        if self._state == "lead":  # the answer's leading newlines are dropped
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return thought, ""
            self._state = "answer"
        answer, self._buf = self._buf, ""
        return thought, answer

    def flush(self) -> tuple[str, str]:
        """What is still held back, at the end of the text."""
        out, self._buf = self._buf, ""
        if self._state in ("start",):
            return "", out
        if self._state == "thought":
            return out, ""
        return "", out.lstrip("\n") if self._state == "lead" else out


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
