"""math-verify with a time limit in any thread.

math-verify bounds its sympy work with SIGALRM, which Python delivers only to the main thread; a
grader called from a worker thread (concurrent evals, a server) would run without any limit, and one
pathological answer could hold that thread forever. Off the main thread the comparison runs in a
child process instead, which is killed (and replaced) when it overruns: the answer then counts as
unverifiable, never as right.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

Verifier = Callable[[str, str], "bool | None"]


def _serve(conn: Connection, fn: Verifier) -> None:
    while True:
        try:
            gold, pred = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(gold, pred)))
        except Exception as exc:  # the caller maps it back to its own error types
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class VerifyWorker:
    """One child process that answers (gold, pred) comparisons, one at a time, each within a limit."""

    def __init__(self, fn: Verifier) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._warm = False  # the child has answered once (it has imported math-verify)

    def _start(self) -> Connection:
        ctx = mp.get_context("spawn")  # no fork of a threaded process
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._fn), daemon=True, name="tandem-math-verify")
        self._proc.start()
        child.close()
        self._conn = parent
        return parent

    def _kill(self) -> None:
        self._warm = False
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def __call__(self, gold: str, pred: str, timeout_s: float) -> tuple[str, Any]:
        """("ok", verdict), ("error", message) or ("timeout", None)."""
        with self._lock:
            conn = self._conn or self._start()
            conn.send((gold, pred))
            # the first call also waits for the child to import math-verify (sympy): a few seconds
            wait = timeout_s + (0.0 if self._warm else 30.0)
            if not conn.poll(wait):
                self._kill()
                return ("timeout", None)
            self._warm = True
            try:
                return conn.recv()
            except EOFError:
                self._kill()
                return ("error", "the math-verify worker died")

    def close(self) -> None:
        with self._lock:
            self._kill()
