"""The OpenAI-compatible server, in-process through httpx's ASGITransport on scripted backends (fast).

Covers the API (non-streaming and SSE), OpenAI semantics (usage, stop, max_tokens, refusals), tandem's
extra body fields, conversation folding, and the faults: backend failing mid-stream, backend slower than
the timeout, client disconnect, malformed bodies, huge bodies, unknown models, API keys, a full queue,
shutdown — each with its status and error body, and a valid request succeeding afterwards.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem import PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend, tokenize
from tandem.config import TandemSettings, load_settings
from tandem.errors import ConfigError
from tandem.server import create_app
from tandem.server.runner import PipelineRunner, StopScanner, find_stop
from tandem.server.schemas import ChatMessage, RequestError, build_question
from tandem.types import GenerationRequest, TokenStream
from uvicorn_thread import uvicorn_thread

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
LLM_REPLY = " ".join(f"Step {i} adds one thing." for i in range(80)) + " The answer is \\boxed{7}."
SLM_REPLY = " So 3 + 4 = 7. The answer is \\boxed{7}."
MSGS = [{"role": "user", "content": QUESTION}]
URL = "/v1/chat/completions"
ALL_MODELS = ["tandem", "tandem-low", "tandem-medium", "tandem-high", "slm", "llm"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recording(ScriptedBackend):
    """A scripted backend that remembers its generation requests and counts close()."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.requests: list[GenerationRequest] = []
        self.closed = 0

    def stream(self, request: GenerationRequest) -> TokenStream:
        self.requests.append(request)
        return super().stream(request)

    def close(self) -> None:
        self.closed += 1


def make(llm_reply: str = LLM_REPLY, slm_reply: str = SLM_REPLY, *, llm: dict[str, Any] | None = None,
         slm: dict[str, Any] | None = None, **server: Any):
    big = Recording(llm_reply, name="big", n_params=1_500_000_000, **(llm or {}))
    small = Recording(slm_reply, name="small", n_params=500_000_000, **(slm or {}))
    app = create_app(TandemSettings(server=server), tandem=Tandem(big, small))
    return app, big, small


def client(app: Any, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30, **kw)


def body(model: str = "tandem", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": MSGS, **kw}


def sse_events(text: str) -> list[Any]:
    """The data of each server-sent event: dicts, and the string "[DONE]"."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def streamed_text(events: list[Any]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events if isinstance(e, dict) and "choices" in e
                   for c in e["choices"])


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert r.headers.get("x-request-id")
    return err


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if smp.name == name and smp.labels == labels:
                return float(smp.value)
    return None


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def ok_after(app: Any, model: str = "slm") -> None:
    """A valid request succeeds (after a fault)."""
    async with client(app) as c:
        r = await c.post(URL, json=body(model))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


# ---- the API -------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_non_streaming_completion_has_openai_shape_usage_and_the_tandem_report():
    app, big, small = make(compare_estimate=400)
    async with client(app) as c:
        r = await c.post(URL, json=body("tandem-low"), headers={"X-Request-Id": "req-42"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-42"
    d = r.json()
    assert d["object"] == "chat.completion" and d["model"] == "tandem-low" and d["id"].startswith("chatcmpl-")
    (choice,) = d["choices"]
    content = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    t = d["tandem"]
    assert t["request_id"] == "req-42" and t["method"] == "tandem" and t["effort"] == "low"
    assert t["stop_reason"] == "budget" and 64 <= t["handover_tokens"] < 64 + 5
    assert big.stats.streams_cancelled == 1  # the LLM was cut off at the hand-over
    assert content.endswith(SLM_REPLY) and content.startswith("Step 0 adds one thing.")
    # which model wrote which part: the LLM's prefix, then the SLM's continuation
    assert [(p["role"], p["model"]) for p in t["parts"]] == [("llm", "big"), ("slm", "small")]
    assert t["parts"][0]["start"] == 0 and t["parts"][0]["end"] == t["parts"][1]["start"]
    assert t["parts"][1]["end"] == len(content)
    assert content[t["parts"][1]["start"]:] == SLM_REPLY
    # usage: both models; prompt = computed prompt tokens, completion = generated tokens of both
    models = t["cost"]["models"]
    u = d["usage"]
    assert u["prompt_tokens"] == sum(m["prompt_tokens_computed"] + m["scored_tokens"] for m in models.values())
    assert u["completion_tokens"] == models["llm"]["generated_tokens"] + models["slm"]["generated_tokens"]
    assert u["completion_tokens"] == t["handover_tokens"] + len(tokenize(SLM_REPLY))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert t["flops_total"] == t["cost"]["flops_total"] > t["flops_generated"] == t["cost"]["flops_generated"] > 0
    assert t["flops_relative_to_llm_alone"] == pytest.approx(t["flops_total"] / (2 * 1.5e9 * 400))
    assert t["answer"] == {"answer": "7", "rule": "boxed"}
    assert t["fallback"] == {"used": False}
    assert t["insights"] and all(set(i) == {"text", "kind", "end_token"} for i in t["insights"])
    assert [c["stage"] for c in t["checkpoints"]][0] == 0 and t["checkpoints"][-1]["handover"]
    assert "features" not in t["checkpoints"][0] and "trace" not in t


@pytest.mark.anyio
async def test_streaming_sends_the_answer_deltas_then_usage_and_the_report_and_done():
    app, _, _ = make()
    async with client(app) as c:
        plain = (await c.post(URL, json=body())).json()
    app, _, _ = make()
    async with client(app) as c:
        r = await c.post(URL, json=body(stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"]
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == chunks[0]["id"] for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed_text(chunks) == plain["choices"][0]["message"]["content"]
    assert len([e for e in chunks if e["choices"] and e["choices"][0]["delta"].get("content")]) > 3
    finish = [e for e in chunks if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]  # include_usage: a last chunk without choices carries usage and the report
    assert last["choices"] == [] and last["usage"] == plain["usage"]
    assert all(e["usage"] is None for e in chunks[:-1])
    assert last["tandem"]["parts"] == plain["tandem"]["parts"]
    assert last["tandem"]["handover_tokens"] == plain["tandem"]["handover_tokens"]


@pytest.mark.anyio
async def test_streaming_without_include_usage_puts_the_report_in_the_finish_chunk():
    app, _, _ = make()
    async with client(app) as c:
        r = await c.post(URL, json=body("slm", stream=True))
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and last["tandem"]["method"] == "slm"
    assert "usage" not in last
    assert streamed_text(events) == SLM_REPLY


@pytest.mark.anyio
async def test_models_list_and_pass_through_models():
    app, big, small = make()
    async with client(app) as c:
        r = await c.get("/v1/models")
        assert r.status_code == 200
        data = r.json()["data"]
        assert [m["id"] for m in data] == ALL_MODELS
        card = {m["id"]: m["tandem"] for m in data}
        assert card["tandem"] == {"method": "tandem", "effort": "medium", "llm": "big", "slm": "small"}
        assert card["tandem-high"]["effort"] == "high" and card["slm"] == {"method": "slm", "model": "small"}
        assert (await c.get("/v1/models/llm")).json()["tandem"] == {"method": "llm", "model": "big"}
        assert_error(await c.get("/v1/models/gpt-4"), 404, "model_not_found")
        r = await c.post(URL, json=body("slm"))
        assert r.json()["choices"][0]["message"]["content"] == SLM_REPLY
        assert big.stats.streams_started == 0 and r.json()["tandem"]["parts"][0]["role"] == "slm"
        r = await c.post(URL, json=body("llm", max_tokens=6))
        d = r.json()
        assert d["choices"][0]["message"]["content"] == "".join(tokenize(LLM_REPLY)[:6])
        assert d["choices"][0]["finish_reason"] == "length" and d["tandem"]["stop_reason"] == "llm_alone"
        assert d["usage"]["completion_tokens"] == 6 and small.stats.streams_started == 1


@pytest.mark.anyio
async def test_effort_models_and_the_effort_field_move_the_hand_over():
    app, _, _ = make()
    async with client(app) as c:
        tokens = {}
        for model in ("tandem-low", "tandem-medium", "tandem-high"):
            tokens[model] = (await c.post(URL, json=body(model))).json()["tandem"]["handover_tokens"]
        assert tokens["tandem-low"] < tokens["tandem-medium"] < tokens["tandem-high"]
        d = (await c.post(URL, json=body("tandem", effort="high"))).json()["tandem"]
        assert d["effort"] == "high" and d["handover_tokens"] == tokens["tandem-high"]
        d = (await c.post(URL, json=body("tandem", reasoning_effort="low"))).json()["tandem"]
        assert d["handover_tokens"] == tokens["tandem-low"]
        assert_error(await c.post(URL, json=body("tandem-low", effort="high")), 400, "invalid_value", "effort")
        assert_error(await c.post(URL, json=body("tandem", effort="max")), 400, param="effort")
        assert_error(await c.post(URL, json=body("tandem", reasoning_effort="minimal")), 400,
                     param="reasoning_effort")


@pytest.mark.anyio
async def test_extra_body_fields_handover_stage_budgets_and_trace():
    app, big, small = make()
    async with client(app) as c:
        d = (await c.post(URL, json=body("tandem-high", stage_budgets=[10, 20], return_trace=True))).json()
        t = d["tandem"]
        stages = [cp["llm_tokens"] for cp in t["checkpoints"]]
        assert stages[0] == 0 and 10 <= stages[1] < 15 and 20 <= stages[2] < 25
        assert t["trace"]["checkpoints"][1]["features"] is not None
        assert t["trace"]["settings"]["stage_budgets"] == [10, 20]
        assert 256 <= stages[-1] < 256 + 5  # the effort's largest budget stays the last stage
        d = (await c.post(URL, json=body("tandem-low", handover="hint"))).json()
        assert d["tandem"]["handover_mode"] == "hint"
        # hint mode: the LLM's insights are in the SLM's prompt, the answer is the SLM's alone
        assert d["choices"][0]["message"]["content"] == SLM_REPLY
        assert "[Thinking Insights]" in small.stats.prompts[-1]
        assert [p["role"] for p in d["tandem"]["parts"]] == ["slm"]
        for bad, param in [({"handover": "relay"}, "handover"), ({"stage_budgets": [0]}, "stage_budgets"),
                           ({"stage_budgets": ["a"]}, "stage_budgets[0]"), ({"stage_budgets": []}, "stage_budgets"),
                           ({"stage_budgets": [99999]}, "stage_budgets"), ({"return_trace": "yes"}, "return_trace")]:
            assert_error(await c.post(URL, json=body(**bad)), 400, param=param)
    await ok_after(app, "tandem")


@pytest.mark.anyio
async def test_decoding_parameters_reach_both_models_and_max_tokens_is_capped():
    app, big, small = make(max_tokens_cap=100)
    async with client(app) as c:
        r = await c.post(URL, json=body("tandem-low", max_tokens=90, temperature=0.7, seed=123, user="u-1"))
        assert r.status_code == 200, r.text
        for req in (big.requests[-1], small.requests[-1]):
            assert req.temperature == 0.7 and req.seed == 123
        assert big.requests[-1].max_tokens == 90
        assert small.requests[-1].max_tokens == 90 - r.json()["tandem"]["handover_tokens"]  # continue: room left
        r = await c.post(URL, json=body("slm", max_completion_tokens=3))
        assert r.json()["choices"][0]["finish_reason"] == "length" and small.requests[-1].max_tokens == 3
        assert_error(await c.post(URL, json=body(max_tokens=101)), 400, "invalid_value", "max_tokens")
        assert_error(await c.post(URL, json=body(max_completion_tokens=101)), 400, param="max_completion_tokens")
        assert_error(await c.post(URL, json=body(max_tokens=0)), 400, param="max_tokens")
        assert_error(await c.post(URL, json=body(max_tokens=5, max_completion_tokens=6)), 400,
                     param="max_completion_tokens")
        assert_error(await c.post(URL, json=body(temperature=3)), 400, param="temperature")
        assert_error(await c.post(URL, json=body(seed=1.5)), 400, param="seed")


@pytest.mark.anyio
async def test_the_cap_also_bounds_the_configured_defaults():
    app, big, small = make(max_tokens_cap=5)
    async with client(app) as c:
        d = (await c.post(URL, json=body("llm"))).json()
    assert big.requests[-1].max_tokens == 5 and d["usage"]["completion_tokens"] == 5
    assert d["choices"][0]["finish_reason"] == "length"


@pytest.mark.anyio
async def test_an_unexpected_pipeline_error_is_a_500_with_the_request_id():
    def broken(_prompt: Any, _text: str) -> str:
        raise RuntimeError("boom")

    big = ScriptedBackend(LLM_REPLY, name="big")
    app = create_app(TandemSettings(), tandem=Tandem(big, ScriptedBackend(broken, name="small")))
    async with client(app) as c:
        r = await c.post(URL, json=body("slm"), headers={"X-Request-Id": "rid-500"})
        err = assert_error(r, 500, "internal_error")
        assert "rid-500" in err["message"] and "boom" not in err["message"]
        assert_error(await c.post(URL, json=body("slm", stream=True)), 500, "internal_error")
        assert (await c.post(URL, json=body("llm", max_tokens=3))).status_code == 200


@pytest.mark.anyio
async def test_stop_sequences_truncate_the_final_text_streamed_or_not():
    app, _, _ = make()
    async with client(app) as c:
        d = (await c.post(URL, json=body("slm", stop=["= 7", "nothing"]))).json()
        assert d["choices"][0]["message"]["content"] == " So 3 + 4 "
        assert d["choices"][0]["finish_reason"] == "stop" and d["tandem"]["stop_sequence"] == "= 7"
        assert d["tandem"]["parts"] == [{"role": "slm", "model": "small", "start": 0, "end": 10}]
        r = await c.post(URL, json=body("slm", stop="= 7", stream=True))
        events = sse_events(r.text)
        assert streamed_text(events) == " So 3 + 4 " and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        d = (await c.post(URL, json=body("llm", max_tokens=4, stop="absent"))).json()
        assert d["choices"][0]["finish_reason"] == "length" and d["tandem"]["stop_sequence"] is None
        assert_error(await c.post(URL, json=body(stop=["a", "b", "c", "d", "e"])), 400, param="stop")
        assert_error(await c.post(URL, json=body(stop=[""])), 400, param="stop")


@pytest.mark.anyio
@pytest.mark.parametrize("llm_reply", [
    " ".join(f"w{i}" for i in range(60)),  # no insight boundary at all: every checkpoint is forced
    " ".join(f"w{i}" + ("." if i % 7 == 6 else "") for i in range(60)),  # boundaries between forced ones
])
async def test_a_hand_over_without_an_insight_boundary_still_streams_exactly_the_answer(llm_reply):
    from tandem.policy import EffortSetting, StopRule

    def app_() -> Any:
        t = Tandem(ScriptedBackend(llm_reply, name="big"), ScriptedBackend(" done.", name="small"),
                   rule=StopRule({"low": EffortSetting(8), "medium": EffortSetting(16), "high": EffortSetting(24)}),
                   config=PipelineConfig(stage_budgets=(4, 8, 16), max_unit_tokens=3))
        return create_app(TandemSettings(), tandem=t)

    for model in ("tandem-low", "tandem-medium", "tandem-high"):
        async with client(app_()) as c:
            d = (await c.post(URL, json=body(model, return_trace=True))).json()
        content = d["choices"][0]["message"]["content"]
        assert content == d["tandem"]["trace"]["text"] and content.endswith(" done.")
        assert content.startswith("w0 w1") and d["tandem"]["stop_reason"] == "budget"
        assert [p["role"] for p in d["tandem"]["parts"]] == ["llm", "slm"]
        assert content[d["tandem"]["parts"][1]["start"]:] == " done."
        async with client(app_()) as c:
            events = sse_events((await c.post(URL, json=body(model, stream=True))).text)
        assert events[-1] == "[DONE]" and streamed_text(events) == content
        assert events[-2]["tandem"]["parts"] == d["tandem"]["parts"]


def test_stop_scanner_streams_exactly_the_truncated_text():
    rng = random.Random(0)
    alphabet = "ab c\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        cut = find_stop(text, stops)
        want = text if cut is None else text[:cut]
        scanner, out, pos = StopScanner(stops), "", 0
        while pos < len(text):
            n = rng.randint(1, 5)
            out += scanner.feed(text[pos:pos + n])
            pos += n
        out += scanner.flush()
        assert out == want, (text, stops)
        assert (scanner.hit is not None) == (cut is not None)


@pytest.mark.anyio
async def test_a_run_that_is_not_streamed_wakes_the_loop_once_and_keeps_its_deltas():
    loop = asyncio.get_running_loop()
    runner = PipelineRunner(4)
    for stream in (True, False):
        handle = runner.admit(loop, stream=stream)
        assert handle is not None

        def work(h: Any) -> Any:
            for word in ("Three", " plus", " four"):
                h.hook("answer_delta", {"role": "slm", "text": word})
            return "done"

        runner.start(handle, work)
        items = [await handle.next(time.monotonic() + 5)]
        while items[-1][0] != "end":
            items.append(await handle.next(time.monotonic() + 5))
        assert handle.deltas == [("slm", "Three"), ("slm", " plus"), ("slm", " four")]
        assert len(items) == (4 if stream else 1)
        assert await handle.future == "done"
    runner.shutdown()


# ---- conversations -------------------------------------------------------------------------------
def msgs(*pairs: tuple[str, Any]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]


def test_a_single_user_message_is_the_question_as_it_is():
    assert build_question(msgs(("user", "  What is 2+2?\n"))) == "  What is 2+2?\n"
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]
    assert build_question([ChatMessage.model_validate({"role": "user", "content": parts})]) == "What is 2+2?"


def test_system_prompts_and_earlier_turns_are_folded_in_a_fixed_format():
    q = build_question(msgs(
        ("system", "Answer in French."), ("user", "What is 2+2?"), ("assistant", "4.\nSimple."),
        ("developer", "Be brief."), ("user", "And times 3?"),
    ))
    assert q == ("Answer in French.\n\nBe brief.\n\n"
                 "Earlier conversation:\n\nUser:\n> What is 2+2?\n\nAssistant:\n> 4.\n> Simple.\n\n"
                 "Question:\nAnd times 3?")
    assert build_question(msgs(("system", "Be exact."), ("user", "Q?"))) == "Be exact.\n\nQuestion:\nQ?"


def test_a_conversation_must_end_with_a_non_empty_user_message():
    with pytest.raises(RequestError) as info:
        build_question(msgs(("user", "Q?"), ("assistant", "A.")))
    assert info.value.status == 400 and info.value.param == "messages"
    with pytest.raises(RequestError) as info:
        build_question(msgs(("user", "  ")))
    assert info.value.param == "messages[0].content"


@pytest.mark.anyio
async def test_the_conversation_is_what_the_models_see():
    app, _, small = make()
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "<think>\nsay hello\n</think>\n\nHello!"},
                    {"role": "user", "content": QUESTION}]
    async with client(app) as c:
        r = await c.post(URL, json={"model": "slm", "messages": conversation})
        assert r.status_code == 200
        # tandem's system prompt, then the client's; earlier turns as turns, their thoughts stripped
        assert ("within \\boxed{}.\n\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!\n<|user|>\n" + QUESTION
                + "\n<|assistant|>\n") in small.stats.prompts[-1]
        bad = [*conversation, {"role": "assistant", "content": "x"}]
        assert_error(await c.post(URL, json={"model": "slm", "messages": bad}), 400, "invalid_value", "messages")
        tool = [{"role": "tool", "content": "x", "tool_call_id": "1"}]
        assert_error(await c.post(URL, json={"model": "slm", "messages": tool}), 400)
        assert_error(await c.post(URL, json={"model": "slm", "messages": []}), 400, param="messages")


# ---- refusals and malformed requests -------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("extra,param", [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"top_p": 1.5}, "top_p"),  # a value no model takes (values in (0, 1] are forwarded)
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"metadata": {"a": "b"}}, "metadata"),
    ({"temprature": 0.5}, "temprature"),
])
async def test_unsupported_and_unknown_parameters_are_refused_by_name(extra, param):
    app, big, small = make()
    async with client(app) as c:
        err = assert_error(await c.post(URL, json=body(**extra)), 400, param=param)
        assert err["type"] == "invalid_request_error"
    assert big.stats.streams_started == small.stats.streams_started == 0


@pytest.mark.anyio
async def test_neutral_values_of_unsupported_parameters_are_accepted():
    app, _, _ = make()
    async with client(app) as c:
        r = await c.post(URL, json=body("slm", n=1, logprobs=False, response_format={"type": "text"}, top_p=1,
                                        presence_penalty=0, frequency_penalty=0.0, tools=None, logit_bias={},
                                        user="someone"))
    assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_malformed_bodies_and_wrong_types_get_400_then_a_valid_request_succeeds():
    app, _, _ = make()
    async with client(app) as c:
        hdr = {"content-type": "application/json"}
        assert_error(await c.post(URL, content=b'{"model": "slm", "messages": [', headers=hdr), 400, "invalid_json")
        assert_error(await c.post(URL, content=b"\xff\xfe", headers=hdr), 400, "invalid_json")
        assert_error(await c.post(URL, content=b"", headers=hdr), 400, "invalid_json")
        assert_error(await c.post(URL, content=b"[1, 2]", headers=hdr), 400, "invalid_json")
        assert_error(await c.post(URL, json={"messages": MSGS}), 400, "missing_required_parameter", "model")
        assert_error(await c.post(URL, json={"model": 5, "messages": MSGS}), 400, "invalid_value", "model")
        assert_error(await c.post(URL, json=body(stream="yes")), 400, param="stream")
        assert_error(await c.post(URL, json=body(temperature="0.5")), 400, param="temperature")
        nan = b'{"model": "slm", "messages": [{"role": "user", "content": "q"}], "temperature": NaN}'
        assert_error(await c.post(URL, content=nan, headers=hdr), 400)
        assert_error(await c.post(URL, json={"model": "slm", "messages": "hi"}), 400, param="messages")
        assert_error(await c.post(URL, json={"model": "slm", "messages": [{"role": "user"}]}), 400,
                     param="messages[0].content")
        assert_error(await c.post(URL, json={"model": "slm", "messages": [{"role": "robot", "content": "x"}]}),
                     400, param="messages[0].role")
        image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        assert_error(await c.post(URL, json={"model": "slm", "messages": image}), 400)
    await ok_after(app)


@pytest.mark.anyio
async def test_unknown_model_url_and_method_get_404_and_405_in_openai_shape():
    app, _, _ = make()
    async with client(app) as c:
        err = assert_error(await c.post(URL, json=body("gpt-4o")), 404, "model_not_found", "model")
        assert "tandem-low" in err["message"]
        assert_error(await c.get("/v1/nothing"), 404, "unknown_url")
        r = await c.get(URL)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST"
        assert_error(await c.delete("/v1/models"), 405)
    await ok_after(app)


@pytest.mark.anyio
async def test_huge_bodies_get_413_by_length_and_while_reading():
    app, big, small = make(max_body_bytes=2000)
    async with client(app) as c:
        huge = body(messages=[{"role": "user", "content": "x" * 5000}])
        assert_error(await c.post(URL, json=huge), 413, "request_too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 500
        r = await c.post(URL, content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "request_too_large")
        assert_error(await c.post(URL, content=b"{}", headers={"content-length": "abc"}), 400)
    assert big.stats.streams_started == small.stats.streams_started == 0
    await ok_after(app)


# ---- API keys ------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_api_keys_are_required_when_configured_and_never_logged(monkeypatch, caplog):
    monkeypatch.setenv("TANDEM_TEST_KEYS", "sk-first-secret, sk-second-secret")
    app, _, _ = make(api_key_env="TANDEM_TEST_KEYS")
    caplog.set_level("DEBUG", logger="tandem")
    async with client(app) as c:
        err = assert_error(await c.post(URL, json=body("slm")), 401, "missing_api_key")
        assert err["type"] == "authentication_error"
        r = await c.post(URL, json=body("slm"), headers={"Authorization": "Bearer sk-wrong"})
        assert_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(await c.post(URL, json=body("slm"), headers={"Authorization": "Basic sk-first-secret"}), 401)
        assert_error(await c.post(URL, json=body("slm"), headers={"Authorization": "Bearer sk-ünïcode".encode()}), 401)
        assert_error(await c.get("/v1/models"), 401)
        assert_error(await c.get("/metrics"), 401)
        assert (await c.get("/health")).status_code == 200  # probes need no key
        for key in ("sk-first-secret", "sk-second-secret"):
            auth = {"Authorization": f"Bearer {key}"}
            assert (await c.post(URL, json=body("slm"), headers=auth)).status_code == 200
            assert (await c.get("/v1/models", headers=auth)).status_code == 200
            assert (await c.get("/metrics", headers=auth)).status_code == 200
    assert "secret" not in caplog.text and "sk-wrong" not in caplog.text
    assert "request_id=" in caplog.text


def test_a_configured_key_variable_that_is_unset_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TANDEM_TEST_NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError, match="TANDEM_TEST_NO_SUCH_VAR"):
        make(api_key_env="TANDEM_TEST_NO_SUCH_VAR")
    monkeypatch.setenv("TANDEM_TEST_NO_SUCH_VAR", " , ")
    with pytest.raises(ConfigError):
        make(api_key_env="TANDEM_TEST_NO_SUCH_VAR")


# ---- faults: backend failure, timeout, queue, disconnect -----------------------------------------
@pytest.mark.anyio
async def test_backend_failing_mid_run_gives_502_never_a_plausible_answer():
    app, big, _ = make(llm={"fail_after": 10})
    async with client(app) as c:
        err = assert_error(await c.post(URL, json=body()), 502, "backend_error")
        assert err["type"] == "server_error" and "BackendError" in err["message"]
        # streaming, failure before any answer text: still a proper status
        assert_error(await c.post(URL, json=body(stream=True)), 502, "backend_error")
        # streaming, failure after answer text was sent: an error event and no [DONE]
        r = await c.post(URL, json=body("llm", stream=True))
        assert r.status_code == 200
        events = sse_events(r.text)
        assert "[DONE]" not in events
        assert streamed_text(events) == "".join(tokenize(LLM_REPLY)[:10])
        assert events[-1]["error"]["code"] == "backend_error" and set(events[-1]) == {"error"}
        assert not any(e["choices"][0]["finish_reason"] for e in events[:-1] if e.get("choices"))
    assert big.stats.streams_started == 3
    await ok_after(app)
    async with client(app) as c:
        text = (await c.get("/metrics")).text
    assert sample(text, "tandem_requests_total", model="tandem", status="502") == 2
    assert sample(text, "tandem_requests_total", model="llm", status="502") == 1


@pytest.mark.anyio
async def test_fallback_retries_once_with_the_configured_model_and_says_so():
    app, big, small = make(llm={"fail_after": 10}, fallback="slm")
    async with client(app) as c:
        d = (await c.post(URL, json=body())).json()
        assert d["choices"][0]["message"]["content"] == SLM_REPLY
        fb = d["tandem"]["fallback"]
        assert fb["used"] is True and fb["model"] == "slm" and "BackendError" in fb["reason"]
        assert d["tandem"]["method"] == "slm" and d["tandem"]["parts"][0]["role"] == "slm"
        # streamed, failing before any text: the fallback streams instead
        events = sse_events((await c.post(URL, json=body(stream=True))).text)
        assert events[-1] == "[DONE]" and streamed_text(events) == SLM_REPLY
        assert events[-2]["tandem"]["fallback"]["used"] is True
        # streamed, failing after text was sent: no retry (the text cannot be taken back)
        events = sse_events((await c.post(URL, json=body("llm", stream=True))).text)
        assert "[DONE]" not in events and events[-1]["error"]["code"] == "backend_error"
        metrics = (await c.get("/metrics")).text
    assert sample(metrics, "tandem_fallbacks_total", model="tandem", to="slm") == 2


@pytest.mark.anyio
async def test_backend_slower_than_the_timeout_is_cancelled_and_gets_504():
    app, big, _ = make(llm={"token_delay_s": 0.05}, request_timeout_s=0.3)
    async with client(app) as c:
        t0 = time.monotonic()
        err = assert_error(await c.post(URL, json=body("tandem-high")), 504, "timeout")
        assert time.monotonic() - t0 < 2.0 and err["type"] == "server_error"
        await wait_for(lambda: big.stats.streams_cancelled == 1)  # the run was stopped, not abandoned
        # streaming, before any text (tandem: the first text comes at a checkpoint): 504 too
        assert_error(await c.post(URL, json=body("tandem-high", stream=True)), 504, "timeout")
        await wait_for(lambda: big.stats.streams_cancelled == 2)
        # streaming after text was sent: an error event, no [DONE]
        events = sse_events((await c.post(URL, json=body("llm", stream=True))).text)
        assert streamed_text(events) and events[-1]["error"]["code"] == "timeout" and "[DONE]" not in events
        await wait_for(lambda: big.stats.streams_cancelled == 3)
        await wait_for(lambda: app.state.tandem_state.runner.active == 0)
        metrics = (await c.get("/metrics")).text
    assert sample(metrics, "tandem_cancellations_total", reason="timeout") == 3
    await ok_after(app)


@pytest.mark.anyio
async def test_a_full_queue_gets_429_and_a_request_succeeds_once_there_is_room():
    app, big, _ = make(llm={"token_delay_s": 0.01}, max_queue=2)
    runner = app.state.tandem_state.runner
    async with client(app) as c:
        slow = [asyncio.create_task(c.post(URL, json=body("llm", max_tokens=40))) for _ in range(2)]
        await wait_for(lambda: runner.active == 2)
        r = await c.post(URL, json=body("slm"))
        err = assert_error(r, 429, "queue_full")
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
        assert [(await t).status_code for t in slow] == [200, 200]
        assert runner.active == 0
        metrics = (await c.get("/metrics")).text
    assert sample(metrics, "tandem_requests_total", model="slm", status="429") == 1
    assert sample(metrics, "tandem_queue_depth") == 0
    await ok_after(app)


def _scope(path: str, body_len: int) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(body_len).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "root_path": ""}


async def _call_and_disconnect(app: Any, payload: dict[str, Any], when: Callable[[list[dict]], bool]) -> list[dict]:
    """Drive the app at the ASGI level; the client disconnects once `when(sent messages)` is true."""
    data = json.dumps(payload).encode()
    sent: list[dict] = []
    gone = asyncio.Event()
    body_given = False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": data, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if when(sent):
            gone.set()

    async def trigger() -> None:
        while not when(sent):
            await asyncio.sleep(0.01)
        gone.set()

    watcher = asyncio.create_task(trigger())
    await asyncio.wait_for(app(_scope(URL, len(data)), receive, send), 10)
    watcher.cancel()
    return sent


@pytest.mark.anyio
async def test_a_client_that_disconnects_mid_stream_cancels_its_run():
    app, big, _ = make(llm={"token_delay_s": 0.01})

    def got_text(sent: list[dict]) -> bool:
        return any(b'"content":"Step' in m.get("body", b"") for m in sent)

    sent = await _call_and_disconnect(app, body("llm", stream=True), got_text)
    assert sent[0]["status"] == 200
    await wait_for(lambda: big.stats.streams_cancelled == 1)
    assert big.stats.tokens_yielded < len(tokenize(LLM_REPLY))
    assert b"[DONE]" not in b"".join(m.get("body", b"") for m in sent)
    await wait_for(lambda: app.state.tandem_state.runner.active == 0)
    await ok_after(app)


@pytest.mark.anyio
async def test_a_client_that_disconnects_while_waiting_cancels_its_run():
    app, big, _ = make(llm={"token_delay_s": 0.01})
    start = time.monotonic()
    await _call_and_disconnect(app, body("tandem-high"), lambda _sent: time.monotonic() - start > 0.2)
    await wait_for(lambda: big.stats.streams_cancelled == 1)
    assert big.stats.tokens_yielded < 256
    async with client(app) as c:
        metrics = (await c.get("/metrics")).text
    assert sample(metrics, "tandem_cancellations_total", reason="disconnect") == 1
    assert sample(metrics, "tandem_requests_total", model="tandem-high", status="499") == 1
    await ok_after(app)


def test_a_client_that_closes_its_socket_mid_stream_cancels_the_run_on_a_real_server():
    app, big, _ = make(llm={"token_delay_s": 0.01})
    with uvicorn_thread(app) as root, httpx.Client(base_url=root, trust_env=False, timeout=10) as c:
        with c.stream("POST", URL, json=body("llm", stream=True)) as r:
            assert r.status_code == 200 and r.headers["x-request-id"]
            next(r.iter_lines())
        deadline = time.monotonic() + 5
        while big.stats.streams_cancelled < 1:
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.01)
        assert big.stats.tokens_yielded < len(tokenize(LLM_REPLY))
        # a non-streaming client that gives up (its read timeout) cancels the run too
        with pytest.raises(httpx.ReadTimeout):
            c.post(URL, json=body("tandem-high"), timeout=0.3)
        deadline = time.monotonic() + 5
        while big.stats.streams_cancelled < 2:
            assert time.monotonic() < deadline, "the run was not cancelled"
            time.sleep(0.01)
        assert c.post(URL, json=body("slm")).json()["choices"][0]["message"]["content"] == SLM_REPLY
    assert big.closed == 1  # the lifespan shutdown closed the backends


def test_importing_the_server_creates_and_loads_nothing_heavy():
    import tandem.server

    assert tandem.server.__all__ == ["create_app", "serve"]
    code = "import sys, tandem.server; print(sorted(m for m in ('llama_cpp', 'openai', 'uvicorn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---- health, lifespan, metrics -------------------------------------------------------------------
@pytest.mark.anyio
async def test_health_and_background_loading_from_settings():
    settings = load_settings(overrides={
        "llm": {"kind": "scripted", "model": "big", "reply": LLM_REPLY, "n_params": 1_500_000_000},
        "slm": {"kind": "scripted", "model": "small", "reply": SLM_REPLY},
        "pipeline": {"effort": "low"},
    })
    app = create_app(settings)
    async with client(app) as c:
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert_error(await c.post(URL, json=body()), 503, "not_ready")
        async with app.router.lifespan_context(app):
            await wait_for(lambda: app.state.tandem_state.tandem is not None)
            r = await c.get("/health")
            assert r.status_code == 200
            assert r.json() == {"status": "ok", "backends": {"llm": True, "slm": True},
                                "queue": {"active": 0, "max": 8, "stuck": 0, "in_flight_max": 1}}
            d = (await c.post(URL, json=body())).json()
            assert d["tandem"]["effort"] == "low" and d["tandem"]["models"] == {"llm": "big", "slm": "small"}
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "shutting_down"
        assert_error(await c.post(URL, json=body()), 503, "shutting_down")


@pytest.mark.anyio
async def test_models_that_fail_to_load_leave_the_server_unready():
    settings = load_settings(overrides={"llm": {"model": "/nonexistent/model.gguf"}})
    app = create_app(settings)
    async with app.router.lifespan_context(app), client(app) as c:
        await wait_for(lambda: app.state.tandem_state.load_error is not None)
        r = await c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "nonexistent" not in r.text  # details go to the log, not to anonymous callers
        assert_error(await c.post(URL, json=body()), 503, "not_ready")


@pytest.mark.anyio
async def test_shutdown_lets_runs_finish_within_the_grace_period_and_closes_the_backends():
    app, big, small = make(llm={"token_delay_s": 0.005}, shutdown_grace_s=5)
    async with client(app) as c:
        async with app.router.lifespan_context(app):
            task = asyncio.create_task(c.post(URL, json=body("llm", max_tokens=40)))
            await wait_for(lambda: big.stats.tokens_yielded > 0)
        assert (await task).status_code == 200  # finished within the grace period
    assert big.closed == small.closed == 1


@pytest.mark.anyio
async def test_shutdown_cancels_runs_that_outlast_the_grace_period():
    app, big, small = make(llm={"token_delay_s": 0.02}, shutdown_grace_s=0.1)
    async with client(app) as c:
        async with app.router.lifespan_context(app):
            task = asyncio.create_task(c.post(URL, json=body("llm")))
            await wait_for(lambda: big.stats.tokens_yielded > 0)
        assert_error(await task, 503, "shutting_down")
    assert big.stats.streams_cancelled == 1 and big.closed == small.closed == 1


@pytest.mark.anyio
async def test_metrics_are_prometheus_text_in_a_registry_per_app():
    app, _, _ = make(compare_estimate=500)
    other, _, _ = make()
    async with client(app) as c:
        await c.post(URL, json=body("tandem-low"))
        await c.post(URL, json=body("slm"))
        await c.post(URL, json=body("nope"))
        r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert sample(text, "tandem_requests_total", model="tandem-low", status="200") == 1
    assert sample(text, "tandem_requests_total", model="unknown", status="404") == 1
    assert sample(text, "tandem_request_duration_seconds_count", model="tandem-low", stream="false") == 1
    assert sample(text, "tandem_model_tokens_total", model="slm", role="slm", kind="generated") == 10
    flops = sample(text, "tandem_model_flops_total", model="slm", role="slm", kind="generated")
    assert flops == 2 * 500_000_000 * 10
    assert sample(text, "tandem_handover_llm_tokens_count", model="tandem-low") == 1
    assert sample(text, "tandem_handover_llm_tokens_bucket", model="tandem-low", le="32.0") == 0
    assert sample(text, "tandem_handover_llm_tokens_bucket", model="tandem-low", le="96.0") == 1
    assert sample(text, "tandem_stop_reasons_total", model="tandem-low", reason="budget") == 1
    assert sample(text, "tandem_llm_alone_flops_estimate_total", model="slm") == 2 * 1.5e9 * 500
    assert sample(text, "tandem_flops_relative_to_llm_alone_count", model="tandem-low") == 1
    assert sample(text, "tandem_queue_wait_seconds_count") == 2
    async with client(other) as c:
        assert sample((await c.get("/metrics")).text, "tandem_requests_total", model="tandem-low",
                      status="200") is None


@pytest.mark.anyio
async def test_request_ids_are_echoed_when_sane_and_made_up_otherwise():
    app, _, _ = make()
    async with client(app) as c:
        assert (await c.get("/health", headers={"X-Request-Id": "abc-123"})).headers["x-request-id"] == "abc-123"
        rid = (await c.get("/health", headers={"X-Request-Id": "bad id\tinjection"})).headers["x-request-id"]
        assert rid != "bad id\tinjection" and len(rid) == 32
        a = (await c.get("/nowhere")).headers["x-request-id"]
        b = (await c.get("/nowhere")).headers["x-request-id"]
        assert a != b


def test_serve_refuses_a_missing_key_variable_in_one_line_before_loading_models():
    proc = subprocess.run([sys.executable, "-m", "tandem.cli", "serve", "--api-key-env", "TANDEM_TEST_UNSET_KEY",
                           "--port", "1"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert len(lines) == 1 and "TANDEM_TEST_UNSET_KEY" in lines[0] and lines[0].startswith("error:")
