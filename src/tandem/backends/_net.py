"""Network operations that obey the current `CallGuard` and call deadline (see `guard`).

httpx's read timeout restarts with every byte received, so an upstream that trickles bytes (SSE
keep-alives, headers one byte at a time) holds a read forever, and a read blocked in the kernel
cannot be stopped by another thread. This wraps httpcore's network backend so that every connect,
read and write of a client

- waits at most until the effective deadline (`guard.effective_deadline()`), whatever httpx's own
  timeout says, and raises `DeadlineExceeded` when it is reached;
- is registered with the current guard while it blocks, so that `guard.interrupt()` from another
  thread shuts the socket down under it (`shutdown(2)` wakes a blocked `recv`, `close(2)` does not)
  and it raises `Interrupted`.

`guard_client(client)` installs the wrapper in the connection pools of an `httpx.Client` (its
default transport and its proxy mounts). It reaches into httpx's transport for the pool, which
httpx does not expose: when that is not possible (a mock transport, another httpx) it returns
False and the client works as before, with the deadlines then checked between received chunks only.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import httpcore
import httpx

from .guard import DeadlineExceeded, Interrupted, current_guard, effective_deadline

T = TypeVar("T")


def _bound(timeout: float | None) -> tuple[float | None, bool]:
    """The timeout to use now and whether the deadline (rather than `timeout`) sets it."""
    guard = current_guard()
    if guard is not None and guard.interrupted:
        raise Interrupted(guard.reason or "interrupted")
    deadline = effective_deadline()
    if deadline is None:
        return timeout, False
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("deadline reached")
    if timeout is None or remaining <= timeout:
        return remaining, True
    return timeout, False


class GuardedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def _io(self, op: Callable[[float | None], T], timeout: float | None) -> T:
        eff, by_deadline = _bound(timeout)
        guard = current_guard()
        if guard is not None:
            guard.attach(self)
        try:
            result = op(eff)
        except httpcore.TimeoutException as exc:
            if guard is not None and guard.interrupted:
                raise Interrupted(guard.reason or "interrupted") from exc
            if by_deadline:
                raise DeadlineExceeded("deadline reached") from exc
            raise
        except (httpcore.NetworkError, OSError) as exc:
            if guard is not None and guard.interrupted:
                raise Interrupted(guard.reason or "interrupted") from exc
            raise
        finally:
            if guard is not None:
                guard.detach(self)
        if guard is not None and guard.interrupted:  # a shut-down socket reads as end of stream
            raise Interrupted(guard.reason or "interrupted")
        return result

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._io(lambda t: self._inner.read(max_bytes, t), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._io(lambda t: self._inner.write(buffer, t), timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._io(lambda t: self._inner.start_tls(ssl_context, server_hostname, t), timeout)
        return GuardedStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def abort(self) -> None:
        """Called from another thread: wake the blocked operation by shutting the socket down."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
            except OSError:
                pass


class GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        eff, by_deadline = _bound(timeout)
        try:
            stream = self._inner.connect_tcp(host, port, eff, local_address, socket_options)
        except httpcore.TimeoutException as exc:
            if by_deadline:
                raise DeadlineExceeded("deadline reached") from exc
            raise
        return GuardedStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        eff, by_deadline = _bound(timeout)
        try:
            stream = self._inner.connect_unix_socket(path, eff, socket_options)
        except httpcore.TimeoutException as exc:
            if by_deadline:
                raise DeadlineExceeded("deadline reached") from exc
            raise
        return GuardedStream(stream)

    def sleep(self, seconds: float) -> None:
        guard = current_guard()
        if guard is None:
            time.sleep(seconds)
        elif guard.wait(seconds):
            raise Interrupted(guard.reason or "interrupted")


def guard_client(client: httpx.Client) -> bool:
    """Wrap the network backend of every connection pool of `client`; True when all were wrapped."""
    transports: list[Any] = [client._transport, *client._mounts.values()]
    ok = True
    for transport in transports:
        if transport is None:  # a mount that bypasses proxies for some hosts
            continue
        pool = getattr(transport, "_pool", None)
        inner = getattr(pool, "_network_backend", None)
        if isinstance(inner, GuardedBackend):
            continue
        if pool is None or not isinstance(inner, httpcore.NetworkBackend):
            ok = False
            continue
        pool._network_backend = GuardedBackend(inner)
    return ok
