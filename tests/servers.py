"""Real OpenAI-compatible servers on loopback for tests.

`llama_cpp_server(...)` starts llama-cpp-python's server (`python -m llama_cpp.server`) on SmolLM2
as a subprocess on 127.0.0.1 and a free port, waits until `/v1/models` answers, yields a handle
with the base URL, and kills the process by its PID afterwards. The fixtures `llama_server`
(one per test module) and `fresh_llama_server` (a factory: a server of its own, e.g. to kill it)
build on it; import them into a test module to use them.

The model is SmolLM2-135M (`tandem.models.resolve_model("smollm2-135m")`, else
`~/.cache/tandem/models/smollm2-135m.gguf`). When it or the server's dependencies are missing the
tests skip, unless TANDEM_REQUIRE_REAL=1, where they fail.

`misbehaving_upstream(behaviour)` is an OpenAI-compatible endpoint on loopback whose answers are
written byte by byte by a behaviour: well-behaved (`answer_sse`), trickling SSE comments or tokens,
trickling headers, one endless line, silent, or any fixed answer (an upstream 500, a huge body).
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

MODEL_ALIAS = "smollm2"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("TANDEM_REQUIRE_REAL") == "1":
        pytest.fail(f"required for this test: {why}")
    pytest.skip(why)


def smol_model_path() -> Path:
    """SmolLM2-135M's GGUF file, or skip (fail under TANDEM_REQUIRE_REAL=1)."""
    try:
        from tandem.models import resolve_model
    except ImportError:
        path = Path.home() / ".cache" / "tandem" / "models" / "smollm2-135m.gguf"
        _need(path.is_file(), f"model file not found: {path}")
        return path
    from tandem.errors import ModelError

    try:
        return resolve_model("smollm2-135m")
    except ModelError as exc:
        _need(False, str(exc))
        raise


def require_server_deps() -> None:
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    _need(not missing, f"llama-cpp-python's server needs: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, *, alive: Callable[[], bool], log: Callable[[], str], name: str,
                     timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll `url` until it answers 200; raise with the server's log if it exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if not alive():
                raise RuntimeError(f"{name} exited at start:\n{log()}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {timeout_s:g} s:\n{log()}")
            time.sleep(interval_s)


@dataclass
class Server:
    base_url: str  # the OpenAI API base, ending in /v1
    pid: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID (no clean shutdown: as if the machine lost the process)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@contextmanager
def llama_cpp_server(
    model_path: Path, *, n_ctx: int = 2048, n_threads: int = 1, startup_timeout_s: float = 120.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Run llama-cpp-python's server on loopback for the duration of the block.

    One thread by default: with as many llama.cpp threads as cores, any other busy process (a test
    running beside it) slows generation down by an order of magnitude."""
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true",
        "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), "--verbose", "false",
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(log_fd)
    server = Server(f"http://127.0.0.1:{port}/v1", proc.pid, proc, Path(log_name))
    try:
        wait_until_ready(f"{server.base_url}/models", alive=lambda: server.alive, log=server.log,
                         name="llama-cpp-python's server", timeout_s=startup_timeout_s)
        yield server
    finally:
        server.kill()
        Path(log_name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[Server]:
    """One llama-cpp-python server on SmolLM2 for a test module."""
    require_server_deps()
    with llama_cpp_server(smol_model_path()) as server:
        yield server


@pytest.fixture
def fresh_llama_server() -> Iterator[Callable[[], Server]]:
    """A factory of servers of their own (for tests that kill them); all stopped afterwards."""
    require_server_deps()
    path = smol_model_path()
    with ExitStack() as stack:
        yield lambda: stack.enter_context(llama_cpp_server(path))


# ---- misbehaving OpenAI-compatible upstreams on loopback --------------------------------------------
@dataclass
class UpstreamRequest:
    """One request an upstream received: its request line, headers (lower-case names) and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class UpstreamGone(Exception):
    """The client closed the connection (or the upstream is stopping): the behaviour ends."""


class Conn:
    """The socket of one upstream connection, for a behaviour: writes that notice a client that went
    away, and waits that end early when the upstream stops."""

    def __init__(self, sock: socket.socket, stop: threading.Event, life_deadline: float) -> None:
        self.sock, self._stop, self._life = sock, stop, life_deadline
        self.sent = 0

    def send(self, data: bytes | str) -> None:
        if self._stop.is_set() or time.monotonic() > self._life:
            raise UpstreamGone("the upstream stops")
        raw = data.encode() if isinstance(data, str) else data
        try:
            self.sock.sendall(raw)
        except OSError as exc:
            raise UpstreamGone(str(exc)) from exc
        self.sent += len(raw)

    def wait(self, seconds: float) -> None:
        """Sleep; end the behaviour when the client closes the connection or the upstream stops."""
        until = time.monotonic() + seconds
        while True:
            if self._stop.is_set() or time.monotonic() > self._life:
                raise UpstreamGone("the upstream stops")
            left = until - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.sock], [], [], min(left, 0.05))
            if readable:
                try:
                    data = self.sock.recv(65536)
                except OSError as exc:
                    raise UpstreamGone(str(exc)) from exc
                if not data:
                    raise UpstreamGone("the client closed the connection")

    def head(self, status: int = 200, content_type: str = "text/event-stream", *,
             length: int | None = None, extra: str = "") -> None:
        """A status line and headers; without `length` the body ends when the connection closes."""
        lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", "Connection: close"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        self.send("\r\n".join(lines) + "\r\n" + extra + "\r\n")


Behaviour = Callable[[UpstreamRequest, Conn], None]


@dataclass
class Upstream:
    """A raw HTTP/1.1 server on loopback whose answers a `Behaviour` writes byte by byte; one request
    per connection. `requests` and `finished` (seconds each connection lasted, appended when the
    behaviour ended: the client went away or the behaviour returned) say what happened."""

    base_url: str
    requests: list[UpstreamRequest]
    finished: list[float]
    sent: list[int]

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")]


def _read_request(sock: socket.socket) -> UpstreamRequest | None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        part = sock.recv(65536)
        if not part:
            return None
        buf += part
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            return None
        body += part
    return UpstreamRequest(method, path, headers, body[:length])


@contextmanager
def misbehaving_upstream(behaviour: Behaviour, *, max_life_s: float = 20.0) -> Iterator[Upstream]:
    """Run `behaviour` for every request on 127.0.0.1 and a free port until the block ends. A
    behaviour that writes forever stops `max_life_s` after its connection opened (so that a test of
    a client that never lets go fails instead of hanging)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.1)
    stop = threading.Event()
    up = Upstream(f"http://127.0.0.1:{srv.getsockname()[1]}/v1", [], [], [])
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve(sock: socket.socket) -> None:
        t0 = time.monotonic()
        conn = Conn(sock, stop, t0 + max_life_s)
        try:
            req = _read_request(sock)
            if req is not None:
                up.requests.append(req)
                behaviour(req, conn)
        except (UpstreamGone, OSError):
            pass
        finally:
            up.finished.append(time.monotonic() - t0)
            up.sent.append(conn.sent)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, _ = srv.accept()
            except OSError:
                continue
            sock.settimeout(None)
            conns.append(sock)
            t = threading.Thread(target=serve, args=(sock,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield up
    finally:
        stop.set()
        acceptor.join(timeout=2)
        srv.close()
        for t in threads:
            t.join(timeout=2)


def sse_event(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def completion_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def answer_sse(tokens: list[str], *, delay_s: float = 0.0) -> Behaviour:
    """A well-behaved streaming completion: the tokens (one event each), a finish reason, [DONE]."""

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head()
        for i, tok in enumerate(tokens):
            if delay_s:
                conn.wait(delay_s)
            conn.send(sse_event(completion_chunk(tok, "stop" if i == len(tokens) - 1 else None)))
        conn.send(sse_event("[DONE]"))

    return run


def trickle_comments(interval_s: float, *, tokens: int = 0) -> Behaviour:
    """200 text/event-stream, `tokens` data events, then an SSE comment every `interval_s`, forever."""

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head()
        for _ in range(tokens):
            conn.send(sse_event(completion_chunk(" tok")))
        while True:
            conn.send(": ping\n\n")
            conn.wait(interval_s)

    return run


def trickle_tokens(interval_s: float) -> Behaviour:
    """A data event (one token) every `interval_s`, forever: never idle, never done."""

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head()
        while True:
            conn.send(sse_event(completion_chunk(" tok")))
            conn.wait(interval_s)

    return run


def trickle_headers(interval_s: float) -> Behaviour:
    """The status line, then header bytes one at a time every `interval_s`: the headers never end."""

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.send("HTTP/1.1 200 OK\r\n")
        while True:
            for byte in "X-Pad: aaaa\r\n":
                conn.send(byte)
                conn.wait(interval_s)

    return run


def endless_line(chunk_bytes: int = 65536, *, prefix: str = "data: ", content_type: str = "text/event-stream",
                 interval_s: float = 0.0) -> Behaviour:
    """200 and then one line that never ends (`prefix` + "x" forever), as fast as the client reads."""

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head(content_type=content_type)
        conn.send(prefix)
        block = b"x" * chunk_bytes
        while True:
            conn.send(block)
            if interval_s:
                conn.wait(interval_s)

    return run


def silent(_req: UpstreamRequest, conn: Conn) -> None:
    """Reads the request and never answers."""
    while True:
        conn.wait(0.05)


def silent_after_headers(_req: UpstreamRequest, conn: Conn) -> None:
    """200 text/event-stream, then nothing."""
    conn.head()
    while True:
        conn.wait(0.05)


def fixed_answer(status: int, body: bytes | str, content_type: str = "application/json") -> Behaviour:
    """One complete answer with a Content-Length."""

    raw = body.encode() if isinstance(body, str) else body

    def run(_req: UpstreamRequest, conn: Conn) -> None:
        conn.head(status, content_type, length=len(raw))
        conn.send(raw)

    return run


def fake_openai_app(tokens: list[str], *, delay_s: float = 0.0) -> Any:
    """A well-behaved OpenAI-compatible ASGI app (Starlette) to run under uvicorn (`uvicorn_thread`):
    `POST /v1/completions` streams `tokens` (chunked, keep-alive), one every `delay_s`, then a finish
    reason and [DONE]; `POST /extras/tokenize` counts a prompt's words. `app.state.streams` counts
    the streams started, `app.state.finished` those that sent everything."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        n = min(len(tokens), int(body.get("max_tokens", len(tokens))))
        request.app.state.streams += 1

        async def events() -> Any:
            for i, tok in enumerate(tokens[:n]):
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield sse_event(completion_chunk(tok, "length" if i == n - 1 else None))
            yield sse_event("[DONE]")
            request.app.state.finished += 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def tokenize(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"tokens": list(range(len(str(body.get("input", "")).split())))})

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/extras/tokenize", tokenize, methods=["POST"])])
    app.state.streams = app.state.finished = 0
    return app
