"""What bounds the backend calls of one run: a deadline, and an interrupt another thread may pull.

A `CallGuard` is made per run by whoever owns the run (the server makes one per request) and set
for the thread that runs it with `guarded(guard)`. Network backends read it with `current_guard()`:
every blocking network operation they make in that thread waits at most until the guard's deadline,
and `guard.interrupt(reason)` from any thread wakes a blocked read at once (the socket is shut down
under it) and makes every later call fail. The backend then raises `Cancelled`, which tells the
pipeline to stop: the run is over, whichever model was being waited for.

Backends also bound single calls (`bounded(deadline)`: e.g. a stream's idle deadline); a network
operation waits until the earliest of the two. `DeadlineExceeded` and `Interrupted` are how the
network layer signals either to the backend, which translates them into the project's errors.
Nothing here imports a network library.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = ["CallGuard", "current_guard", "guarded"]


class Abortable(Protocol):
    """A blocking operation in progress that another thread can end (e.g. a socket read)."""

    def abort(self) -> None: ...


class DeadlineExceeded(Exception):
    """A network operation reached the run's or the call's deadline (internal signal)."""


class Interrupted(Exception):
    """The run's guard was interrupted (internal signal)."""


class CallGuard:
    """The deadline (`time.monotonic()` seconds, or None) and the interrupt of one run's calls."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.reason: str | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._active: set[Abortable] = set()

    @property
    def interrupted(self) -> bool:
        return self._event.is_set()

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.monotonic() if now is None else now) >= self.deadline

    def interrupt(self, reason: str) -> bool:
        """Stop the run's calls (thread-safe, idempotent): blocked operations are aborted now, later
        ones fail at once. False when it was already interrupted."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            active = list(self._active)
        for op in active:
            op.abort()
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, less when the deadline comes first; True when interrupted."""
        if self.deadline is not None:
            seconds = min(seconds, self.deadline - time.monotonic())
        return self._event.wait(max(0.0, seconds))

    def attach(self, op: Abortable) -> None:
        """Register a blocking operation about to start; raises Interrupted if already interrupted
        (registration first, then the check: an interrupt either sees `op` or is seen here)."""
        with self._lock:
            if self._event.is_set():
                raise Interrupted(self.reason or "interrupted")
            self._active.add(op)

    def detach(self, op: Abortable) -> None:
        with self._lock:
            self._active.discard(op)


_GUARD: ContextVar[CallGuard | None] = ContextVar("tandem_call_guard", default=None)
_CALL_DEADLINE: ContextVar[float | None] = ContextVar("tandem_call_deadline", default=None)


def current_guard() -> CallGuard | None:
    return _GUARD.get()


@contextmanager
def guarded(guard: CallGuard) -> Iterator[CallGuard]:
    """Bound every backend call made by this thread within the block by `guard`."""
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)


@contextmanager
def bounded(deadline: float | None) -> Iterator[None]:
    """Bound the network operations within the block by `deadline` too (one call's own limit).
    Keep the block free of `yield`s: the bound belongs to the caller's context."""
    token = _CALL_DEADLINE.set(deadline)
    try:
        yield
    finally:
        _CALL_DEADLINE.reset(token)


def effective_deadline() -> float | None:
    """The earliest of the run's and the call's deadlines (None: unbounded)."""
    guard = _GUARD.get()
    limits = [d for d in (guard.deadline if guard else None, _CALL_DEADLINE.get()) if d is not None]
    return min(limits) if limits else None
