"""Lines and server-sent events from a byte stream, with a limit on the length of a line.

Pure functions over iterables (no network library), used by the OpenAI-compatible backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class LineTooLong(Exception):
    """A line exceeded the limit (internal signal; the backend raises its protocol error)."""


def split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[str]:
    """The lines of a byte stream (ended by LF, CRLF or CR, as SSE allows), decoded as UTF-8 with
    replacement. At most `max_line_bytes` are held for one line: a longer one raises LineTooLong as
    soon as it is seen, whatever the stream sends next. A last line without an end is yielded too."""
    buf = bytearray()
    skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
    for chunk in chunks:
        if not chunk:
            continue
        start, n = 0, len(chunk)
        if skip_lf:
            skip_lf = False
            if chunk[:1] == b"\n":
                start = 1
        cr = lf = -2  # next CR / LF at or after `start` (-2: not searched yet, -1: none)
        while start < n:
            if cr != -1 and cr < start:
                cr = chunk.find(b"\r", start)
            if lf != -1 and lf < start:
                lf = chunk.find(b"\n", start)
            end = min(cr if cr >= 0 else n, lf if lf >= 0 else n)
            if len(buf) + end - start > max_line_bytes:
                raise LineTooLong(f"a line longer than {max_line_bytes} bytes")
            buf += chunk[start:end]
            if end == n:
                break
            yield buf.decode("utf-8", "replace")
            buf.clear()
            start = end + 1
            if end == cr:
                if start < n:
                    if chunk[start : start + 1] == b"\n":
                        start += 1
                else:
                    skip_lf = True
    if buf:
        yield buf.decode("utf-8", "replace")


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` payloads of a server-sent event stream, one per event (multi-line data joined
    with newlines). Comments, `event:`, `id:` and `retry:` fields are skipped. An event cut off by
    the end of the stream is dropped, as the SSE specification says, except a bare `[DONE]`."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data and "\n".join(data).strip() == "[DONE]":
        yield "[DONE]"
