"""Misbehaving OpenAI-compatible upstreams on loopback against the HTTP backend and the server.

Each upstream is a real socket server (`servers.misbehaving_upstream`) that writes its answer byte by
byte: SSE keep-alives forever, tokens forever, headers that never end, one endless line, an endless
JSON body, silence, an upstream 500. Deadlines in the configs are short, so each test takes about a
second; an upstream stops on its own after a few seconds, so a client that never lets go fails its
test instead of hanging it. docs/security.md lists these attacks.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from servers import (
    Conn,
    UpstreamRequest,
    endless_line,
    fake_openai_app,
    fixed_answer,
    misbehaving_upstream,
    silent,
    silent_after_headers,
    trickle_comments,
    trickle_headers,
    trickle_tokens,
)
from tandem import Tandem
from tandem.backends.guard import CallGuard, guarded
from tandem.backends.openai_http import BackendHTTPError, OpenAIBackend, OpenAIBackendConfig
from tandem.backends.scripted import ScriptedBackend
from tandem.config import TandemSettings
from tandem.errors import BackendProtocolError, BackendTimeout, Cancelled
from tandem.server import create_app
from tandem.types import GenerationRequest, Message, Prompt, TokenStep, TokenStream, Usage
from uvicorn_thread import uvicorn_thread

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
PROMPT = Prompt((Message("user", "What is 2+3?"),))
LIFE_S = 4.0  # an upstream that writes forever stops after this long


def backend(base_url: str, **kw: Any) -> OpenAIBackend:
    cfg: dict[str, Any] = dict(n_params=1000, chat_template=TEMPLATE, max_retries=0, retry_backoff_s=0.0,
                               count_prompt_tokens=False, timeout_s=0.4, connect_timeout_s=1.0)
    cfg.update(kw)
    return OpenAIBackend(OpenAIBackendConfig(base_url, "m", **cfg))


def drain(b: OpenAIBackend, max_tokens: int = 64) -> list[str]:
    return [s.text for s in b.stream(GenerationRequest(PROMPT, max_tokens=max_tokens))]


def elapsed(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


def wait_until(cond: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ---- deadlines in the backend --------------------------------------------------------------------
def test_sse_keep_alives_do_not_reset_the_idle_deadline():
    with misbehaving_upstream(trickle_comments(0.05, tokens=2), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0, idle_timeout_s=0.4)
        got: list[str] = []
        secs, exc = elapsed(lambda: got.extend(s.text for s in b.stream(GenerationRequest(PROMPT))))
        assert isinstance(exc, BackendTimeout), exc
        assert "no data" in str(exc) and got == [" tok", " tok"]
        assert 0.35 < secs < 1.5, secs
        wait_until(lambda: len(up.finished) == 1)  # the connection was closed, not left trickling
        assert up.finished[0] < 2.0
        b.close()


def test_the_first_data_event_must_come_within_timeout_s():
    with misbehaving_upstream(trickle_comments(0.05), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=0.4, idle_timeout_s=30.0)
        secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, BackendTimeout) and secs < 1.5, (exc, secs)
        b.close()


def test_a_stream_that_never_ends_meets_its_deadline_from_max_tokens():
    # a token every 0.05 s is never idle; the stream's deadline is timeout_s + max_tokens / min rate
    with misbehaving_upstream(trickle_tokens(0.05), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=0.3, min_tokens_per_s=100.0)
        got: list[str] = []
        secs, exc = elapsed(lambda: got.extend(s.text for s in b.stream(GenerationRequest(PROMPT, max_tokens=50))))
        assert isinstance(exc, BackendTimeout), exc
        assert 0.6 < secs < 1.5 and len(got) >= 5, (secs, len(got))
        b.close()


def test_more_tokens_than_max_tokens_is_a_protocol_error():
    with misbehaving_upstream(trickle_tokens(0.0), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=2.0)
        secs, exc = elapsed(lambda: drain(b, max_tokens=20))
        assert isinstance(exc, BackendProtocolError) and "max_tokens" in str(exc), exc
        assert secs < 1.0
        b.close()


def test_headers_trickled_byte_by_byte_meet_the_deadline():
    with misbehaving_upstream(trickle_headers(0.02), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=0.4)
        secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, BackendTimeout) and secs < 1.2, (exc, secs)
        secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, BackendTimeout) and secs < 1.2, (exc, secs)
        b.close()


def test_a_json_body_trickled_byte_by_byte_meets_the_deadline():
    def trickle_json(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head(200, "application/json", length=10_000)
        while True:
            conn.send(" ")
            conn.wait(0.02)

    with misbehaving_upstream(trickle_json, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=0.4)
        secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, BackendTimeout) and secs < 1.2, (exc, secs)
        b.close()


# ---- sizes ---------------------------------------------------------------------------------------
def test_an_endless_line_is_a_protocol_error_after_a_bounded_read():
    with misbehaving_upstream(endless_line(), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0)
        secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, BackendProtocolError) and "line" in str(exc), exc
        assert secs < 2.0
        wait_until(lambda: len(up.sent) == 1)
        assert up.sent[0] < 8 * 2**20, up.sent  # read up to the line cap (plus socket buffers), not more
        b.close()


def test_endless_small_events_hit_the_cap_of_the_whole_answer():
    def spam(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head()
        block = b": keep-alive\n\n" * 4096
        while True:
            conn.send(block)

    with misbehaving_upstream(spam, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0)
        secs, exc = elapsed(lambda: drain(b, max_tokens=16))
        assert isinstance(exc, BackendProtocolError) and "larger than" in str(exc), exc
        assert secs < 2.0
        wait_until(lambda: len(up.sent) == 1)
        assert up.sent[0] < 16 * 2**20, up.sent
        b.close()


def test_a_huge_json_answer_is_refused_by_length_and_while_reading():
    with misbehaving_upstream(endless_line(prefix='{"choices": "', content_type="application/json"),
                              max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0)
        secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, BackendProtocolError) and "larger than" in str(exc), exc
        assert secs < 2.0
        wait_until(lambda: len(up.sent) == 1)
        assert up.sent[0] < 32 * 2**20, up.sent
        b.close()

    def declared(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head(200, "application/json", length=10**12)
        conn.wait(10)

    with misbehaving_upstream(declared, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0)
        secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, BackendProtocolError) and "larger than" in str(exc) and secs < 1.0, (exc, secs)
        b.close()


def test_an_endless_error_body_is_read_up_to_a_cap():
    def error_forever(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head(500, "text/plain")
        while True:
            conn.send(b"y" * 65536)

    with misbehaving_upstream(error_forever, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=5.0)
        secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, BackendHTTPError) and exc.status_code == 500 and secs < 1.0, (exc, secs)
        assert len(str(exc)) < 1000
        b.close()


# ---- interruption from another thread and the run's deadline -------------------------------------
def interrupt_after(guard: CallGuard, seconds: float, reason: str = "disconnect") -> threading.Timer:
    t = threading.Timer(seconds, guard.interrupt, args=(reason,))
    t.start()
    return t


@pytest.mark.parametrize("behaviour", [silent, silent_after_headers, trickle_comments(0.05)],
                         ids=["before-headers", "after-headers", "keep-alives"])
def test_a_guard_interrupts_a_blocked_stream_from_another_thread(behaviour):
    with misbehaving_upstream(behaviour, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=30.0)
        guard = CallGuard()
        interrupt_after(guard, 0.2)
        with guarded(guard):
            secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, Cancelled) and "disconnect" in str(exc), exc
        assert secs < 0.6, secs
        wait_until(lambda: len(up.finished) == 1)  # the upstream saw the connection go
        # the backend is still usable afterwards, outside the guard
        with misbehaving_upstream(fixed_answer(200, '{"tokens": [1, 2]}')) as ok:
            b2 = backend(ok.base_url)
            assert b2._http.post_json("/tokenize", {"x": 1}, root=True) == {"tokens": [1, 2]}
            b2.close()
        b.close()


def test_a_guard_interrupts_a_score_and_a_retry_backoff():
    with misbehaving_upstream(silent, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=30.0)
        guard = CallGuard()
        interrupt_after(guard, 0.2)
        with guarded(guard):
            secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, Cancelled) and secs < 0.6, (exc, secs)
        b.close()
    def retry_later(req: UpstreamRequest, conn: Conn) -> None:
        conn.head(503, "application/json", length=2, extra="Retry-After: 8\r\n")
        conn.send("{}")

    with misbehaving_upstream(retry_later, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=30.0, max_retries=3)
        guard = CallGuard()
        interrupt_after(guard, 0.2)
        with guarded(guard):
            secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, Cancelled) and secs < 0.6, (exc, secs)
        assert len(up.requests) == 1
        b.close()


def test_the_guards_deadline_bounds_every_call_of_the_run():
    with misbehaving_upstream(trickle_comments(0.05), max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=30.0)
        with guarded(CallGuard(time.monotonic() + 0.3)):
            secs, exc = elapsed(lambda: drain(b))
        assert isinstance(exc, Cancelled) and "timeout" in str(exc) and secs < 0.7, (exc, secs)
        b.close()
    with misbehaving_upstream(silent, max_life_s=LIFE_S) as up:
        b = backend(up.base_url, timeout_s=30.0)
        with guarded(CallGuard(time.monotonic() + 0.3)):
            secs, exc = elapsed(lambda: b.score("hello"))
        assert isinstance(exc, Cancelled) and secs < 0.7, (exc, secs)
        b.close()


# ---- a well-behaved upstream under uvicorn (chunked, keep-alive) ----------------------------------
def test_time_the_consumer_holds_a_token_is_not_counted_against_the_server():
    app = fake_openai_app([f" t{i}" for i in range(8)], delay_s=0.02)
    with uvicorn_thread(app) as root:
        b = backend(root + "/v1", timeout_s=2.0, idle_timeout_s=0.3, min_tokens_per_s=1000.0)
        got = []
        for step in b.stream(GenerationRequest(PROMPT, max_tokens=8)):
            got.append(step.text)
            if len(got) in (1, 4):
                time.sleep(0.5)  # e.g. a checkpoint: longer than the idle deadline and the stream's
        assert got == [f" t{i}" for i in range(8)]
        b.close()


def test_an_interrupted_stream_leaves_the_backend_and_its_connection_pool_usable():
    app = fake_openai_app([f" t{i}" for i in range(200)], delay_s=0.01)
    with uvicorn_thread(app) as root:
        b = backend(root + "/v1", timeout_s=5.0, count_prompt_tokens=True)
        assert b.guarded_network
        assert len(drain(b, max_tokens=3)) == 3  # connections are reused between requests
        guard = CallGuard()
        interrupt_after(guard, 0.2)
        with guarded(guard):
            got: list[str] = []
            secs, exc = elapsed(lambda: got.extend(s.text for s in b.stream(GenerationRequest(PROMPT,
                                                                                          max_tokens=200))))
        assert isinstance(exc, Cancelled) and secs < 0.5 and 3 < len(got) < 200, (exc, secs, len(got))
        s = b.stream(GenerationRequest(PROMPT, max_tokens=5))
        assert len(list(s)) == 5 and s.usage.prompt_tokens == len(b.render(PROMPT).split())  # /extras/tokenize
        assert app.state.streams == 3 and app.state.finished == 2
        b.close()


# ---- the server, through its real app ------------------------------------------------------------
URL = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


def body(model: str = "llm", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSGS, **kw}


def small() -> ScriptedBackend:
    return ScriptedBackend(" So 3 + 4 = 7. The answer is \\boxed{7}.", name="small", n_params=500_000_000)


def app_with(llm: Any, slm: Any | None = None, **server: Any) -> Any:
    return create_app(TandemSettings(server=server), tandem=Tandem(llm, slm or small()))


async def async_wait(cond: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_trickling_upstream_times_out_and_the_worker_is_freed():
    with misbehaving_upstream(trickle_comments(0.05), max_life_s=LIFE_S) as up:
        llm = backend(up.base_url, timeout_s=30.0)  # only the server's request deadline applies
        app = app_with(llm, max_queue=2, request_timeout_s=0.5)
        runner = app.state.tandem_state.runner
        async with client(app) as c:
            t0 = time.monotonic()
            r1, r2 = await asyncio.gather(c.post(URL, json=body()), c.post(URL, json=body(stream=True)))
            assert (r1.status_code, r2.status_code) == (504, 504), (r1.text, r2.text)
            assert time.monotonic() - t0 < 1.5
            await async_wait(lambda: runner.active == 0, 1.0)  # the worker stopped, the slots are back
            assert (await c.post(URL, json=body("slm"))).status_code == 200
            health = await c.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
        # no connection left trickling: each closed well before the upstream's own life limit (the wait is
        # long for a loaded machine; the bound that matters is on when the connections closed)
        wait_until(lambda: len(up.finished) == len(up.requests) >= 1, timeout_s=10.0)
        assert max(up.finished) < 2.0


class Stuck(ScriptedBackend):
    """A backend whose stream blocks, deaf to cancellation, until `release` is set."""

    def __init__(self) -> None:
        super().__init__("x y z", name="stuck", n_params=1_000)
        self.release = threading.Event()

    def stream(self, request: GenerationRequest) -> TokenStream:
        release = self.release

        def gen() -> Any:
            release.wait(10)
            yield TokenStep("x")
            return "stop"

        return TokenStream(gen(), Usage())


@pytest.mark.anyio
async def test_health_is_degraded_while_a_worker_is_stuck_past_its_deadline():
    stuck = Stuck()
    app = app_with(stuck, request_timeout_s=0.2, stuck_grace_s=0.2)
    async with client(app) as c:
        assert (await c.post(URL, json=body())).status_code == 504
        assert (await c.get("/health")).status_code == 200  # within the grace period
        await asyncio.sleep(0.3)
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "degraded" and r.json()["queue"]["stuck"] == 1
        stuck.release.set()
        await async_wait(lambda: app.state.tandem_state.runner.active == 0)
        r = await c.get("/health")
        assert r.status_code == 200 and r.json()["queue"]["stuck"] == 0


class AsgiRequest:
    """One request driven at the ASGI level, whose client disconnects when `disconnect()` is called."""

    def __init__(self, app: Any, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": data, "more_body": False}
            await self._gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": URL, "raw_path": URL.encode(), "query_string": b"",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "root_path": ""}
        self.task = asyncio.create_task(app(scope, receive, send))

    def disconnect(self) -> None:
        self._gone.set()

    @property
    def status(self) -> int | None:
        return next((int(m["status"]) for m in self.sent if m["type"] == "http.response.start"), None)


@pytest.mark.anyio
async def test_a_queued_request_that_disconnects_gives_its_slot_back_at_once():
    slow = ScriptedBackend(" ".join(["step"] * 400), name="big", n_params=1_500_000_000, token_delay_s=0.01)
    app = app_with(slow, max_queue=2, request_timeout_s=30)
    runner = app.state.tandem_state.runner
    async with client(app) as c:
        running = AsgiRequest(app, body("llm"))
        await async_wait(lambda: slow.stats.tokens_yielded > 0)
        queued = AsgiRequest(app, body("slm"))
        await async_wait(lambda: runner.active == 2)
        queued.disconnect()
        await async_wait(lambda: runner.active == 1, 0.5)  # while the running request still runs
        assert not running.task.done()
        later = asyncio.create_task(c.post(URL, json=body("slm")))
        await async_wait(lambda: runner.active == 2, 0.5)  # admitted, not 429
        running.disconnect()
        r = await later
        assert r.status_code == 200, r.text
        await asyncio.wait_for(asyncio.gather(running.task, queued.task), 5)
        assert queued.status is None or queued.status == 499
    await async_wait(lambda: runner.active == 0)


SECRET_DETAIL = "pg at 10.1.2.3:5432 refused: password for admin"


@pytest.mark.anyio
async def test_an_upstream_failure_reaches_the_client_without_its_url_or_text(caplog):
    error = json.dumps({"error": {"message": SECRET_DETAIL}})
    with misbehaving_upstream(fixed_answer(500, error)) as up:
        llm = backend(up.base_url, timeout_s=5.0)
        app = app_with(llm)
        port = up.base_url.split(":")[2].split("/")[0]
        caplog.set_level("ERROR", logger="tandem.server")
        async with client(app) as c:
            r = await c.post(URL, json=body())
            streamed = await c.post(URL, json=body(stream=True))
        assert r.status_code == 502 and r.json()["error"]["code"] == "backend_error"
        assert streamed.status_code == 502
        for text in (r.text, streamed.text):
            assert "10.1.2.3" not in text and "password" not in text and "127.0.0.1" not in text and port not in text
        assert "BackendHTTPError" in r.json()["error"]["message"]
        rid = r.headers["x-request-id"]
        assert rid in r.json()["error"]["message"]
        assert SECRET_DETAIL in caplog.text and rid in caplog.text  # the details are in the server's log
        app = app_with(backend(up.base_url, timeout_s=5.0), fallback="slm")
        async with client(app) as c:
            d = (await c.post(URL, json=body("llm"))).json()
        assert d["tandem"]["fallback"] == {"used": True, "model": "slm", "reason": "BackendHTTPError"}
    with misbehaving_upstream(silent, max_life_s=LIFE_S) as up:
        app = app_with(backend(up.base_url, timeout_s=0.3))
        async with client(app) as c:
            r = await c.post(URL, json=body())
        assert r.status_code == 504 and r.json()["error"]["code"] == "backend_timeout"
        assert "127.0.0.1" not in r.text and up.base_url.split(":")[2].split("/")[0] not in r.text


@pytest.mark.anyio
async def test_an_endless_upstream_line_gives_a_quick_502():
    with misbehaving_upstream(endless_line(), max_life_s=LIFE_S) as up:
        app = app_with(backend(up.base_url, timeout_s=5.0))
        async with client(app) as c:
            t0 = time.monotonic()
            r = await c.post(URL, json=body())
            assert r.status_code == 502 and time.monotonic() - t0 < 2.0, r.text
            assert (await c.post(URL, json=body("slm"))).status_code == 200


def test_a_request_body_sent_byte_by_byte_gets_408_and_the_connection_closes():
    app = app_with(small(), body_timeout_s=0.3)
    payload = json.dumps(body("slm")).encode()
    with uvicorn_thread(app) as root:
        host, port = root.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\n\r\n".encode())
            t0 = time.monotonic()
            for byte in payload:  # one byte every 50 ms, until the server answers
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                if select.select([sock], [], [], 0.05)[0] or time.monotonic() - t0 > 3:
                    break
            answer = b""
            sock.settimeout(2)
            try:
                while part := sock.recv(65536):  # to the end: the server closes the connection
                    answer += part
            except ConnectionResetError:
                pass
            secs = time.monotonic() - t0
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"request_timeout"' in answer and secs < 1.5, secs
        # the server still serves a well-behaved client
        assert httpx.post(root + URL, json=body("slm"), timeout=10).status_code == 200
