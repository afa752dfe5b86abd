"""HTTP transport of the OpenAI-compatible backend: requests, retries, deadlines, size caps, and
the one place where its library errors become the project's.

One `httpx.Client` per backend. Every exception of httpx, of the network layer (`_net`: a passed
deadline, the run's guard interrupted), of JSON decoding and of the SSE line splitter is
translated here, with `raise ... from exc`; the modules above (`_wire`, `_echo`, `_endpoints`,
`openai_http`) see only the project's errors:

- connection refused, DNS failure, connection lost before an answer -> `BackendUnavailable`;
- a deadline passed -> `BackendTimeout` (see "Deadlines" below);
- a non-2xx answer -> `BackendHTTPError` (a `BackendProtocolError`) with the status and the
  server's own error message;
- malformed JSON or SSE, a malformed value in an answer (`parsing`), an answer or a line larger
  than its cap -> `BackendProtocolError`;
- the run's `CallGuard` (`tandem.backends.guard`) interrupted, or its deadline passed ->
  `Cancelled`;
- the connection lost or failing once a streamed answer has begun -> `BackendError`.

The API key is sent as a bearer token and appears in no message (`redact`), log or repr.

Deadlines (`Watch`, monotonic clock; time the consumer spends between two tokens, e.g. on a
checkpoint, is not counted against the server):

- the answer's headers and, for a stream, its first data event within `timeout_s` of the request;
  a non-streamed answer whole within `timeout_s`;
- between two data events at most `idle_timeout_s` (default `timeout_s`): SSE comments and other
  keep-alive lines do not count as data;
- the whole stream within `timeout_s + max_tokens / min_tokens_per_s`, so that long reasoning
  survives while a server that trickles tokens forever does not.

Every network operation (connect, each read and write) waits at most until the nearest deadline,
also when the server trickles bytes (httpx's own read timeout restarts with every byte), and a
run's `CallGuard` may interrupt it from another thread (the server does when a request times out
or its client goes away): see `tandem.backends._net`.

Sizes: a streamed answer may hold `1 MiB + (max_tokens + 16) x (1 KiB + 128 B x top_logprobs)`,
one SSE line `256 KiB + 16 x (1 KiB + 128 B x top_logprobs)`; a scoring echo
`1 MiB + (bytes of the text + score_max_tokens + 16) x (1 KiB + 128 B x k)` (twice that with
`prompt_logprobs`); other JSON answers `1 MiB + 16 x` the request's size; an error body is read up
to 64 KiB. Reading stops at the cap (a protocol error) whatever the server sends next.

Retries (`max_retries`, exponential backoff from `retry_backoff_s`, capped at 8 s, or the server's
`Retry-After`) happen only for connection errors, 5xx and 429, never once a token was streamed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    Cancelled,
    TandemError,
)
from ._net import guard_client
from ._sse import LineTooLong, iter_sse_data, split_lines
from .guard import DeadlineExceeded, Interrupted, bounded, current_guard

MAX_BACKOFF_S = 8.0
# size caps (see the module docstring): what any answer may hold besides its tokens, and per token
BASE_BYTES = 1 << 20
LINE_BASE_BYTES = 256 << 10
ERROR_BODY_BYTES = 64 << 10
TOKEN_SLACK = 16  # tokens a stream may send beyond max_tokens before it is a protocol error


def token_bytes(k: int) -> int:
    """Generous bytes of JSON per token with `k` alternatives (a chat-API alternative with its
    `bytes` array is ~60-120 bytes; a completions-API one ~30)."""
    return 1024 + 128 * max(0, k)


def stream_cap(max_tokens: int, k: int) -> int:
    return BASE_BYTES + (max(0, max_tokens) + TOKEN_SLACK) * token_bytes(k)


def line_cap(k: int) -> int:
    return LINE_BASE_BYTES + 16 * token_bytes(k)


def score_cap(text: str, k: int, *, max_tokens: int, prompt_logprobs: bool) -> int:
    n_tokens = len(text.encode("utf-8")) + max_tokens + TOKEN_SLACK  # a token holds at least one byte
    return BASE_BYTES + n_tokens * token_bytes(k) * (2 if prompt_logprobs else 1)


class BackendHTTPError(BackendProtocolError):
    """The server answered with a non-2xx status."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class Watch:
    """The deadlines of one request to the server (`time.monotonic()` seconds): its answer (the
    headers, then a stream's first data event, or a whole non-streamed answer) by `first_s`; with
    `idle_s`, each next data event within `idle_s` of the previous one; with `total_s`, the end.
    Time the consumer holds a streamed token (between `pause` and `resume`) is not counted."""

    def __init__(self, first_s: float, idle_s: float | None = None, total_s: float | None = None,
                 *, stream: bool = False) -> None:
        self.first_s, self.idle_s, self.total_s, self.stream = first_s, idle_s, total_s, stream
        self.restart()

    def restart(self) -> None:
        now = time.monotonic()
        self.data_by = now + self.first_s
        self.end_by = None if self.total_s is None else now + self.total_s
        self.got_data = False
        self._paused: float | None = None

    def deadline(self) -> float:
        return self.data_by if self.end_by is None else min(self.data_by, self.end_by)

    def data(self) -> None:
        """A data event arrived: the idle deadline starts again."""
        self.got_data = True
        if self.idle_s is not None:
            self.data_by = time.monotonic() + self.idle_s

    def pause(self) -> None:
        self._paused = time.monotonic()

    def resume(self) -> None:
        if self._paused is not None:
            held = time.monotonic() - self._paused
            self._paused = None
            self.data_by += held
            if self.end_by is not None:
                self.end_by += held

    def check(self) -> None:
        if time.monotonic() >= self.deadline():
            raise DeadlineExceeded("deadline reached")

    def describe(self) -> str:
        """Which deadline passed."""
        if self.end_by is not None and self.end_by <= self.data_by:
            return (f"the stream did not end within {self.total_s:g} s "
                    "(timeout_s + max_tokens / min_tokens_per_s)")
        if not self.stream:
            return f"no complete answer within {self.first_s:g} s"
        if not self.got_data:
            return f"no data within {self.first_s:g} s of the request"
        return f"no data for {self.idle_s:g} s (keep-alive comments do not count)"


def error_message(raw: bytes) -> str:
    """The server's own error message, from the usual shapes of error bodies."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw[:500].decode("utf-8", "replace").strip()
    msg: Any = body
    if isinstance(body, Mapping):
        msg = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(msg, Mapping):
            msg = msg.get("message", msg)
    return (msg if isinstance(msg, str) else json.dumps(msg))[:500]


class HttpClient:
    """POSTs JSON to one server for the model `name`: `api_base` is the OpenAI API base (`.../v1`),
    `root` the server's own endpoints beside it. `transport` replaces the network (tests)."""

    def __init__(self, *, name: str, base_url: str, api_key: str, timeout_s: float, connect_timeout_s: float,
                 max_retries: int, retry_backoff_s: float, transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self._secret = api_key
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.api_base = base_url.rstrip("/")
        self.root = self.api_base[: -len("/v1")] if self.api_base.endswith("/v1") else self.api_base
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
            follow_redirects=False,
        )
        # every connect / read / write obeys the deadlines and the run's guard (False with a mock)
        self.guarded_network = guard_client(self._client)

    def close(self) -> None:
        self._client.close()

    def redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def url(self, path: str, root: bool = False) -> str:
        return (self.root if root else self.api_base) + path

    # ---- requests --------------------------------------------------------------------------------
    def send(self, path: str, body: dict[str, Any], *, watch: Watch, root: bool = False,
             retry: bool = True) -> httpx.Response:
        """POST `body`; a 2xx response with its headers read and its body not. Retries connection
        errors, 5xx and 429 up to `max_retries` times with backoff; each attempt restarts `watch`."""
        url = self.url(path, root)
        retries = self.max_retries if retry else 0
        attempt = 0
        while True:
            attempt += 1
            watch.restart()
            try:
                req = self._client.build_request("POST", url, json=body)
                with bounded(watch.deadline()):
                    resp = self._client.send(req, stream=True)
            except (DeadlineExceeded, Interrupted) as exc:
                raise self._limit_error(exc, watch, url) from exc
            except httpx.HTTPError as exc:
                retryable = isinstance(
                    exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ConnectTimeout | httpx.PoolTimeout
                )
                if retryable and attempt <= retries:
                    self._pause(self._backoff(attempt, None), watch)
                    continue
                raise self._request_error(exc, url) from exc
            if 200 <= resp.status_code < 300:
                return resp
            status = resp.status_code
            try:
                message = error_message(self.read_body(resp, watch, ERROR_BODY_BYTES, truncate=True))
            except (BackendTimeout, BackendError):
                message = "(the error body could not be read)"
            finally:
                resp.close()
            if (status == 429 or status >= 500) and attempt <= retries:
                self._pause(self._backoff(attempt, resp), watch)
                continue
            raise BackendHTTPError(self.redact(f"{self.name}: {url} answered HTTP {status}: {message}"), status)

    def post_json(self, path: str, body: dict[str, Any], *, root: bool = False, retry: bool = True,
                  cap: int | None = None) -> dict[str, Any]:
        """POST and parse a JSON answer that must come whole within `timeout_s` and hold at most
        `cap` bytes (default: 1 MiB + 16 x the request's size)."""
        if cap is None:
            cap = BASE_BYTES + 16 * len(json.dumps(body))
        watch = Watch(self.timeout_s)
        resp = self.send(path, body, watch=watch, root=root, retry=retry)
        try:
            raw = self.read_body(resp, watch, cap)
        finally:
            resp.close()
        return self.parse_json(raw, f"answer from {path}")

    def _backoff(self, attempt: int, resp: httpx.Response | None) -> float:
        if resp is not None:
            after = resp.headers.get("retry-after")
            try:
                if after is not None:
                    return min(MAX_BACKOFF_S, max(0.0, float(after)))
            except ValueError:
                pass
        return min(MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempt - 1))

    def _pause(self, seconds: float, watch: Watch) -> None:
        """Back off before a retry: no longer than the deadlines allow, interrupted by the guard."""
        seconds = min(seconds, max(0.0, watch.deadline() - time.monotonic()))
        guard = current_guard()
        if guard is None:
            time.sleep(seconds)
        elif guard.wait(seconds):
            raise Cancelled(f"run cancelled ({guard.reason or 'interrupted'})")

    # ---- reading answers -------------------------------------------------------------------------
    def chunks(self, resp: httpx.Response, watch: Watch, cap: int) -> Iterator[bytes]:
        """The response's body as it arrives, at most `cap` bytes, each read bounded by the watch's
        deadline (and the run's guard); errors translated (the answer has started)."""
        it = resp.iter_bytes()
        total = 0
        while True:
            try:
                watch.check()
                with bounded(watch.deadline()):
                    chunk = next(it, None)
                watch.check()  # bytes trickled in until past the deadline
            except (DeadlineExceeded, Interrupted) as exc:
                raise self._limit_error(exc, watch, self.api_base) from exc
            except httpx.HTTPError as exc:
                raise self._read_error(exc) from exc
            if chunk is None:
                return
            total += len(chunk)
            if total > cap:
                raise BackendProtocolError(f"{self.name}: the answer is larger than {cap} bytes")
            yield chunk

    def sse_data(self, resp: httpx.Response, watch: Watch, *, cap: int, max_line: int) -> Iterator[str]:
        """The `data` payloads of a streamed answer (see `_sse`), within `cap` bytes in all and
        `max_line` bytes per line."""
        try:
            yield from iter_sse_data(split_lines(self.chunks(resp, watch, cap), max_line))
        except LineTooLong as exc:
            raise BackendProtocolError(f"{self.name}: malformed stream: {exc}") from exc

    def read_body(self, resp: httpx.Response, watch: Watch, cap: int, *, truncate: bool = False) -> bytes:
        """A whole body of at most `cap` bytes (a protocol error beyond, or with `truncate` the
        first `cap` bytes)."""
        length = resp.headers.get("content-length")
        if not truncate and length is not None and length.isdigit() and int(length) > cap:
            raise BackendProtocolError(f"{self.name}: the answer is larger than {cap} bytes ({length})")
        parts: list[bytes] = []
        size = 0
        for chunk in self.chunks(resp, watch, cap if not truncate else 1 << 62):
            parts.append(chunk)
            size += len(chunk)
            if truncate and size >= cap:
                break
        return b"".join(parts)[:cap] if truncate else b"".join(parts)

    def parse_json(self, raw: str | bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            snippet = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
            raise BackendProtocolError(self.redact(f"{self.name}: malformed {what}: {snippet!r}")) from exc
        if not isinstance(data, dict):
            raise BackendProtocolError(f"{self.name}: malformed {what}: not a JSON object")
        return data

    @contextmanager
    def parsing(self, what: str) -> Iterator[None]:
        """Reading values out of a decoded answer (`_wire`): a value of the wrong type or shape
        (a string where a number belongs, a missing key) is a protocol error. Keep the block free
        of `yield`s."""
        try:
            yield
        except (TypeError, ValueError, KeyError) as exc:
            raise BackendProtocolError(self.redact(f"{self.name}: malformed {what}: {exc}")) from exc

    # ---- what library errors become ----------------------------------------------------------------
    def _limit_error(self, exc: Exception, watch: Watch, url: str) -> TandemError:
        """What a passed deadline or an interrupt becomes: the run's (Cancelled) or this call's
        (BackendTimeout)."""
        guard = current_guard()
        if guard is not None and (guard.interrupted or isinstance(exc, Interrupted)):
            return Cancelled(f"run cancelled ({guard.reason or 'interrupted'})")
        if guard is not None and guard.expired():
            return Cancelled("run cancelled (timeout)")
        return BackendTimeout(f"{self.name}: {watch.describe()} ({url})")

    def _request_error(self, exc: httpx.HTTPError, url: str) -> BackendError:
        """An httpx error before the server answered."""
        name = self.name
        if isinstance(exc, httpx.ConnectTimeout):
            return BackendTimeout(f"{name}: cannot connect to {url} within {self.connect_timeout_s:g} s")
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(f"{name}: no answer from {url} within {self.timeout_s:g} s")
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return BackendUnavailable(self.redact(f"{name}: cannot reach {url}: {exc}"))
        if isinstance(exc, httpx.UnsupportedProtocol):
            return BackendUnavailable(self.redact(f"{name}: unsupported URL {url}: {exc}"))
        return BackendError(self.redact(f"{name}: request to {url} failed: {exc}"))

    def _read_error(self, exc: httpx.HTTPError) -> BackendError:
        """An httpx error while an answer was being read."""
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(f"{self.name}: no data from {self.api_base} for {self.timeout_s:g} s")
        if isinstance(exc, httpx.RemoteProtocolError | httpx.NetworkError):
            return BackendError(self.redact(f"{self.name}: stream ended unexpectedly (connection lost: {exc})"))
        return BackendError(self.redact(f"{self.name}: stream failed: {exc}"))
