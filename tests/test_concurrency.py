"""`tandem serve` keeps several pipelines in flight where both models take concurrent calls, bounded by
the server's `max_in_flight` and by each model's own limit (an embedded llama.cpp model: one)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tandem import Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.config import TandemSettings
from tandem.server import create_app
from tandem.types import GenerationRequest, Prompt, TokenStep, TokenStream

URL = "/v1/chat/completions"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Counting(ScriptedBackend):
    """Scripted, answering each question with its own number; counts the streams open at once."""

    def __init__(self, name: str, *, max_in_flight: int | None, delay: float = 0.01) -> None:
        super().__init__(self._answer, name=name, token_delay_s=delay, max_in_flight=max_in_flight)
        self.lock, self.open_now, self.peak = threading.Lock(), 0, 0

    @staticmethod
    def _answer(prompt: Prompt, text: str) -> str:
        n = text.split("question number ")[-1].split(".")[0]
        return " ".join(f"step{i} counting." for i in range(12)) + f" The answer is \\boxed{{{n}}}."

    def stream(self, request: GenerationRequest) -> TokenStream:
        inner = super().stream(request)

        def counted() -> Iterator[TokenStep]:
            with self.lock:
                self.open_now += 1
                self.peak = max(self.peak, self.open_now)
            try:
                yield from inner
                return inner.finish_reason
            finally:
                inner.close()
                with self.lock:
                    self.open_now -= 1

        return TokenStream(counted(), inner.usage)  # type: ignore[arg-type]


def app_with(llm_limit: int | None, slm_limit: int | None, **server: Any) -> tuple[Any, Counting, Counting]:
    big, small = Counting("big", max_in_flight=llm_limit), Counting("small", max_in_flight=slm_limit)
    return create_app(TandemSettings(server=server), tandem=Tandem(big, small)), big, small


def ask(n: int, model: str = "llm") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": f"This is question number {n}. Answer."}],
            "max_tokens": 64}


async def burst(app: Any, n: int, model: str = "llm") -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as c:
        return list(await asyncio.gather(*(c.post(URL, json=ask(i, model)) for i in range(n))))


@pytest.mark.anyio
async def test_runs_overlap_up_to_max_in_flight_when_both_models_take_concurrent_calls() -> None:
    app, big, _ = app_with(None, None, max_in_flight=3, max_queue=16)
    rs = await burst(app, 8)
    assert [r.status_code for r in rs] == [200] * 8
    for i, r in enumerate(rs):  # each answer is its own request's: no run read another's text
        assert r.json()["choices"][0]["message"]["content"].endswith(f"\\boxed{{{i}}}.")
    assert big.peak == 3
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        assert (await c.get("/health")).json()["queue"]["in_flight_max"] == 3


@pytest.mark.anyio
async def test_the_model_with_the_smaller_limit_bounds_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tandem")
    app, big, _ = app_with(None, 1, max_in_flight=4, max_queue=16)  # an HTTP LLM, an embedded SLM
    rs = await burst(app, 4)
    assert [r.status_code for r in rs] == [200] * 4 and big.peak == 1
    assert "up to 1 (the SLM (small) takes 1 call(s) at a time)" in caplog.text
    app, big, _ = app_with(2, None, max_in_flight=4, max_queue=16)
    await burst(app, 6)
    assert big.peak == 2


@pytest.mark.anyio
async def test_tandem_runs_in_flight_hand_over_each_to_its_own_slm_answer() -> None:
    app, big, small = app_with(None, None, max_in_flight=4, max_queue=16)
    rs = await burst(app, 6, model="tandem")
    for i, r in enumerate(rs):
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].endswith(f"\\boxed{{{i}}}.")
    assert big.peak > 1


@pytest.mark.anyio
async def test_the_queue_still_bounds_admission_with_runs_in_flight() -> None:
    app, big, _ = app_with(None, None, max_in_flight=2, max_queue=3)
    rs = await burst(app, 6)
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 3 and codes.count(429) >= 1 and set(codes) <= {200, 429}
    assert big.peak <= 2


def test_solve_many_runs_in_flight_within_the_backends_limits() -> None:
    questions = [f"This is question number {i}. Answer." for i in range(7)]
    big, small = Counting("big", max_in_flight=None), Counting("small", max_in_flight=None)
    results = Tandem(big, small).solve_many(questions, method="llm", max_in_flight=3)
    assert [r.answer.answer for r in results] == [str(i) for i in range(7)]  # in order, each its own
    assert big.peak == 3
    big, small = Counting("big", max_in_flight=None), Counting("small", max_in_flight=1)
    assert len(Tandem(big, small).solve_many(questions[:3], method="llm")) == 3
    assert big.peak == 1  # an embedded SLM (one call at a time) bounds the pair


def _core(rec: dict[str, Any]) -> dict[str, Any]:
    """What a probe record says of a problem, without its times and cache counts."""
    return {"id": rec["problem_id"], "llm": rec["llm"]["text"], "slm": (rec["slm_alone"]["text"], rec["slm_alone"]["grade"]),
            "cks": [(c["stage"], c["llm_tokens"], c["n_insights"], c["features"], c["slm"]["text"], c["slm"]["grade"])
                    for c in rec["checkpoints"]]}


def test_probe_in_flight_writes_the_serial_records_and_says_so(tmp_path: Any) -> None:
    from tandem.bench.graders import get_grader
    from tandem.bench.probe import ProbeConfig
    from tandem.bench.runner import run_probe
    from tandem.bench.store import RunStore, read_manifest, read_records
    from tandem.errors import ConfigError
    from tandem.types import Problem

    problems = [Problem(f"p{i}", f"This is question number {i}. Answer.", str(i)) for i in range(6)]
    cfg = ProbeConfig(stage_budgets=(4, 8, 16))
    tables = {}
    for n in (1, 3):
        big, small = Counting("big", max_in_flight=None), Counting("small", max_in_flight=None)
        assert run_probe(problems, big, small, get_grader("gsm8k"), RunStore(tmp_path / str(n)), cfg,
                         dataset="x/test[0:6]", grader_name="gsm8k", concurrency=n) == 6
        assert read_manifest(tmp_path / str(n))["concurrency"] == n and big.peak == n
        tables[n] = sorted((_core(r) for r in read_records(tmp_path / str(n))), key=lambda r: r["id"])
    assert tables[3] == tables[1] and all(r["slm"][1]["correct"] for r in tables[1])
    with pytest.raises(ConfigError, match="another manifest"):  # resumed at its own concurrency only
        run_probe(problems, Counting("big", max_in_flight=None), Counting("small", max_in_flight=None),
                  get_grader("gsm8k"), RunStore(tmp_path / "3"), cfg, dataset="x/test[0:6]", grader_name="gsm8k")
    with pytest.raises(ConfigError, match="take 1 call"):  # an embedded-like SLM
        run_probe(problems, Counting("big", max_in_flight=None), Counting("small", max_in_flight=1),
                  get_grader("gsm8k"), RunStore(tmp_path / "x"), cfg, dataset="x/test[0:6]", grader_name="gsm8k",
                  concurrency=2)


@pytest.mark.anyio
async def test_deadlines_and_shutdown_hold_with_runs_in_flight() -> None:
    big, small = Counting("big", max_in_flight=None, delay=0.05), Counting("small", max_in_flight=None, delay=0.05)
    app = create_app(TandemSettings(server={"max_in_flight": 3, "max_queue": 8, "request_timeout_s": 0.3}),
                     tandem=Tandem(big, small))
    runner = app.state.tandem_state.runner
    rs = await burst(app, 3)  # each run needs ~0.7 s: all three pass their deadline together
    assert [r.status_code for r in rs] == [504] * 3 and big.peak == 3
    for _ in range(200):  # every worker comes back and gives its slot up
        if runner.active == 0 and big.open_now == 0:
            break
        await asyncio.sleep(0.01)
    assert runner.active == 0 and big.open_now == 0  # the streams were closed, not left running
    big.token_delay_s = small.token_delay_s = 0.0
    assert [r.status_code for r in await burst(app, 3)] == [200] * 3
    state = app.state.tandem_state
    await state.shutdown()  # idle: nothing to cancel, backends closed
    assert state.draining
