"""Running the synchronous pipeline for the event loop.

Up to N pipelines run at once on a pool of worker threads, N the smaller of the server's
`max_in_flight` and each model's own limit (`concurrency_for`: an embedded llama.cpp model is not
re-entrant and holds a run's warm cache, so a server with one runs one pipeline at a time; HTTP
backends take concurrent calls, which their engine batches). In front of the pool, a bounded
admission count (requests waiting + running), and a handle per run: the worker pushes the run's answer deltas (streamed runs only) and its end to the loop with
`loop.call_soon_threadsafe`, and the loop cancels a run by setting an event that the pipeline's hook
checks at every event (it then raises `Cancelled`, which closes every model stream).

A pipeline blocked inside a backend call sees no event, so each run also carries a `CallGuard` with
the request's deadline, set for the worker thread while it runs: network backends wait no longer
than that deadline, and cancelling the run interrupts the call they are blocked in. A run cancelled
before it started gives its admission slot back at once. A run that has not returned
`stuck_grace_s` after its deadline (or its cancellation) counts as stuck (`/health` says so).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import capabilities
from ..backends.guard import CallGuard, guarded
from ..errors import BackendError, Cancelled
from ..pipeline import Tandem
from ..prompts import Conversation
from ..result import TandemResult
from .answer import StopScanner, find_stop  # noqa: F401  (they lived here: importable as before)

log = logging.getLogger("tandem.server")

T = TypeVar("T")
# ("delta", text, role) | ("end", "", "") | ("cancelled", reason, "")
Item = tuple[str, str, str]


@dataclass(frozen=True)
class RunSpec:
    question: str
    method: str  # "tandem", "slm" or "llm"
    overrides: dict[str, Any]
    stream: bool
    fallback: str | None = None  # "slm" | "llm": retry once with that model alone after a backend failure
    request_id: str = ""
    handover: str = "continue"  # the run's hand-over mode (tandem runs)
    conversation: Conversation | None = None  # what comes before the question


@dataclass
class Outcome:
    result: TandemResult
    deltas: list[tuple[str, str]]  # (role, text) of the answer deltas of the run that gave `result`
    fallback: dict[str, Any] | None = None


class RunHandle:
    """One admitted request's run. `cancel` and the queue belong to the loop; `hook` to the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[str], None] | None = None,
                 *, stream: bool = True, timeout_s: float | None = None) -> None:
        self.loop = loop
        self.stream = stream  # push each answer delta to the loop; else only the end (one wake-up per run)
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.admitted = time.monotonic()
        self.deadline = math.inf if timeout_s is None else self.admitted + timeout_s
        self.guard = CallGuard(None if timeout_s is None else self.deadline)  # for the backends' calls
        self.started: float | None = None
        self.cancel_reason: str | None = None
        self.cancelled_at: float | None = None
        self.done = False  # the worker finished with this run
        self.emitted = False  # some answer text was pushed to the loop
        self.deltas: list[tuple[str, str]] = []
        self.future: asyncio.Future[Outcome] | None = None
        self.continue_mode = False  # a tandem run whose SLM continues the LLM's text
        self._llm_full = ""  # every LLM token so far
        self._llm_sent = ""  # the LLM's answer deltas so far
        self._units_now = False  # the latest LLM token closed an insight unit
        self._cancel = threading.Event()
        self._on_cancel = on_cancel
        self._abandon: Callable[[], None] | None = None  # gives the slot back if the run has not started

    # ---- loop side ------------------------------------------------------------------------------
    def cancel(self, reason: str) -> bool:
        """Ask the run to stop ("disconnect", "timeout", "shutdown"). False when it already ended."""
        if self.done or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        self.cancelled_at = time.monotonic()
        self._cancel.set()
        self.guard.interrupt(reason)  # wakes a backend call the worker is blocked in
        self.queue.put_nowait(("cancelled", reason, ""))
        if self._on_cancel is not None:
            self._on_cancel(reason)
        if self._abandon is not None:
            self._abandon()
        return True

    def stuck(self, grace_s: float, now: float | None = None) -> bool:
        """The worker has not returned `grace_s` after this run's deadline or cancellation."""
        if self.done or self.started is None:
            return False
        limit = min(self.deadline, self.cancelled_at if self.cancelled_at is not None else math.inf)
        return (time.monotonic() if now is None else now) > limit + grace_s

    async def next(self, deadline: float) -> Item:
        """The next item, or ("cancelled", "timeout", "") once `deadline` (monotonic) has passed."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if self.cancel("timeout"):
                return ("cancelled", "timeout", "")
            return await self.queue.get()  # it ended meanwhile: its "end" (or cancel) is on the way

    # ---- worker side ----------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"run cancelled ({self.cancel_reason})")

    def hook(self, event: str, payload: dict[str, Any]) -> None:
        """The pipeline's event hook: raises Cancelled once the run is cancelled."""
        self.check()
        if event == "answer_delta":
            self._delta(str(payload.get("role", "")), str(payload.get("text", "")))
        elif event == "llm_token":
            self._llm_full += str(payload.get("text", ""))
            self._units_now = False
        elif event == "insight":
            self._units_now = True
        elif event == "handover" and self.continue_mode:
            self._complete_llm_prefix(int(payload.get("llm_tokens", 0)))

    def _delta(self, role: str, text: str) -> None:
        if not text:
            return
        if role == "llm":
            self._llm_sent += text
        self.deltas.append((role, text))
        if self.stream:
            self.emitted = True
            self.push(("delta", text, role))

    def _complete_llm_prefix(self, llm_tokens: int) -> None:
        """In continue mode the pipeline emits the LLM's text as answer deltas at insight boundaries
        only. A hand-over at a checkpoint that no boundary closed (forced by `max_unit_tokens`) keeps
        every LLM token in the final text without emitting those after the last boundary: send them
        here, before the SLM's continuation. A no-op whenever the pipeline emitted them itself."""
        if self._units_now or llm_tokens == 0:
            return  # handed over at a boundary (text emitted up to it), or before the LLM began
        full, sent = self._llm_full, self._llm_sent
        if full.startswith(sent) and len(full) > len(sent):
            self._delta("llm", full[len(sent):])

    def push(self, item: Item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


def run_spec(tandem: Tandem, spec: RunSpec, handle: RunHandle) -> Outcome:
    """Solve in the worker thread; after a backend failure retry once with `spec.fallback` when
    allowed (not cancelled, and for a stream only if no answer text was sent yet)."""
    handle.check()
    handle.continue_mode = spec.method == "tandem" and spec.handover == "continue"
    try:
        result = tandem.solve(spec.question, method=spec.method, on_event=handle.hook,
                              conversation=spec.conversation, **spec.overrides)
        return Outcome(result, list(handle.deltas))
    except BackendError as exc:
        fb = spec.fallback
        if fb is None or fb == spec.method or handle.cancelled or (spec.stream and handle.emitted):
            raise
        log.warning("request_id=%s backend failed, retrying with the %s alone: %s: %s", spec.request_id, fb,
                    type(exc).__name__, exc)
        handle.deltas.clear()
        handle.continue_mode = False
        result = tandem.solve(spec.question, method=fb, on_event=handle.hook, conversation=spec.conversation,
                              **spec.overrides)
        # the client learns what kind of failure it was; the details (upstream URLs, its own error
        # text) stay in the log
        return Outcome(result, list(handle.deltas), {"used": True, "model": fb, "reason": type(exc).__name__})


def concurrency_for(tandem: Tandem, max_in_flight: int) -> tuple[int, str]:
    """How many pipelines may run at once, and which limit says so: the server's `max_in_flight`, or
    the smaller limit of the two models (every run holds both for its whole length)."""
    n, why = max_in_flight, "server.max_in_flight"
    for role, backend in (("llm", tandem.llm), ("slm", tandem.slm)):
        limit = capabilities.max_in_flight(backend)
        if limit is not None and limit < n:
            n, why = limit, f"the {role.upper()} ({backend.info.name}) takes {limit} call(s) at a time"
    return max(1, n), why


class PipelineRunner:
    """Admission control and the pool of worker threads (one until `set_concurrency`)."""

    def __init__(self, max_queue: int, *, on_depth: Callable[[int], None] | None = None) -> None:
        self.max_queue = max_queue
        self.concurrency = 1
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-pipeline")
        self.handles: set[RunHandle] = set()
        self._on_depth = on_depth or (lambda _n: None)

    @property
    def active(self) -> int:
        return len(self.handles)

    def admit(self, loop: asyncio.AbstractEventLoop, on_cancel: Callable[[str], None] | None = None,
              *, stream: bool = True, timeout_s: float | None = None) -> RunHandle | None:
        """A handle for a new run (its deadline `timeout_s` from now), or None when `max_queue` runs are
        waiting or running. A run that is not streamed wakes the loop once, at its end: every wake-up
        costs the worker the GIL."""
        if len(self.handles) >= self.max_queue:
            return None
        handle = RunHandle(loop, on_cancel, stream=stream, timeout_s=timeout_s)
        self.handles.add(handle)
        self._on_depth(len(self.handles))
        return handle

    def start(self, handle: RunHandle, fn: Callable[[RunHandle], Outcome],
              on_start: Callable[[RunHandle], None] | None = None) -> None:
        def work() -> Outcome:
            handle.started = time.monotonic()
            if on_start is not None:
                on_start(handle)
            try:
                with guarded(handle.guard):
                    return fn(handle)
            finally:
                handle.done = True
                handle.push(("end", "", ""))

        cfut = self.executor.submit(work)
        fut = asyncio.wrap_future(cfut, loop=handle.loop)
        handle.future = fut

        def release(f: asyncio.Future[Outcome] | None = None) -> None:
            if handle in self.handles:
                self.handles.discard(handle)
                self._on_depth(len(self.handles))
            if f is not None and not f.cancelled():
                f.exception()  # retrieved here: the request may have stopped listening

        def abandon() -> None:  # on the loop, when the run is cancelled
            if cfut.cancel():  # it had not started, and now never will
                handle.done = True
                release()

        handle._abandon = abandon
        fut.add_done_callback(release)

    def set_concurrency(self, n: int) -> None:
        """Run up to `n` pipelines at once from now on (called once the models are known, before any run
        is admitted: the previous pool is then idle)."""
        if n == self.concurrency:
            return
        old, self.concurrency = self.executor, n
        self.executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tandem-pipeline")
        old.shutdown(wait=False)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker thread (e.g. loading the models), in turn with the runs."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def cancel_all(self, reason: str) -> int:
        return sum(1 for h in list(self.handles) if h.cancel(reason))

    def stuck(self, grace_s: float) -> int:
        """Runs whose worker has not returned `grace_s` after their deadline or cancellation."""
        now = time.monotonic()
        return sum(1 for h in self.handles if h.stuck(grace_s, now))

    async def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.handles and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.handles

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
