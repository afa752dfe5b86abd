"""Server options for long-thinking LLMs: a per-request thinking budget, and streams that send their
headers at once and keep-alive comments while no text comes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tandem import PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.config import TandemSettings
from tandem.server import create_app

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
LLM_REPLY = " ".join(f"Step {i} adds one thing." for i in range(80)) + " The answer is \\boxed{7}."
SLM_REPLY = " So 3 + 4 = 7. The answer is \\boxed{7}."
URL = "/v1/chat/completions"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(*, llm_delay: float = 0.0, fail: bool = False, **server: Any) -> Any:
    llm = ScriptedBackend(LLM_REPLY, name="big", n_params=1_500_000_000, token_delay_s=llm_delay,
                          fail_after=0 if fail else None)
    slm = ScriptedBackend(SLM_REPLY, name="small", n_params=500_000_000)
    cfg = PipelineConfig(stage_budgets=(8, 16, 32, 64, 128))
    return create_app(TandemSettings(server=server), tandem=Tandem(llm, slm, config=cfg))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


@pytest.mark.anyio
async def test_a_thinking_budget_per_request() -> None:
    async with client(make()) as c:
        budgets = {}
        for budget in (8, 64):
            r = await c.post(URL, json={"model": "tandem-high", "thinking_budget": budget,
                                        "messages": [{"role": "user", "content": QUESTION}]})
            assert r.status_code == 200, r.text
            budgets[budget] = r.json()["tandem"]["handover_tokens"]
        assert 8 <= budgets[8] < 16 and 64 <= budgets[64] < 128
        r = await c.post(URL, json={"model": "tandem", "thinking_budget": 10**7,
                                    "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "thinking_budget"


@pytest.mark.anyio
async def test_keep_alive_comments_while_no_text_comes() -> None:
    # the LLM takes 30 ms a token and its text is held back to whole insight units: silent stretches
    app = make(llm_delay=0.03, stream_keepalive_s=0.02)
    async with client(app) as c:
        r = await c.post(URL, json={"model": "llm", "stream": True, "max_tokens": 20,
                                    "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200
        assert ": keep-alive" in r.text
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and r.text.rstrip().endswith("[DONE]")


@pytest.mark.anyio
async def test_with_keep_alive_an_early_failure_is_an_error_event() -> None:
    async with client(make(fail=True, stream_keepalive_s=5.0)) as c:
        r = await c.post(URL, json={"model": "llm", "stream": True,
                                    "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200  # the headers went out before the run failed
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert "error" in events[-1] and "[DONE]" not in r.text
    async with client(make(fail=True)) as c:  # without keep-alive the status line waits: a proper status
        r = await c.post(URL, json={"model": "llm", "stream": True,
                                    "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 502


class _Keeping(ScriptedBackend):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.requests: list[Any] = []

    def stream(self, request: Any) -> Any:
        self.requests.append(request)
        return super().stream(request)


@pytest.mark.anyio
async def test_a_requests_sampling_values_reach_both_models() -> None:
    llm, slm = _Keeping(LLM_REPLY, name="big"), _Keeping(SLM_REPLY, name="small")
    app = create_app(TandemSettings(), tandem=Tandem(llm, slm, config=PipelineConfig(stage_budgets=(8, 16))))
    async with client(app) as c:
        r = await c.post(URL, json={"model": "tandem-low", "top_p": 0.95, "top_k": 20, "presence_penalty": 0.5,
                                    "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200, r.text
    for b in (llm, slm):
        assert dict(b.requests[-1].sampling) == {"top_p": 0.95, "top_k": 20, "presence_penalty": 0.5}


def test_a_roles_own_values_win_over_a_requests() -> None:
    from tandem.backends.sampling import Sampling
    from tandem.types import GenerationRequest, Prompt

    req = GenerationRequest(Prompt(()), temperature=0.7, seed=3, sampling=(("top_p", 0.9), ("top_k", 20)))
    s = Sampling(top_p=0.5).resolve(req)
    assert (s.top_p, s.top_k, s.temperature, s.seed) == (0.5, 20, 0.7, 3)
