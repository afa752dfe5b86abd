"""The server for real: uvicorn on a loopback port, driven by the official `openai` client, with
SmolLM2-135M through llama.cpp in both roles; then with the LLM role served by a real
llama-cpp-python server, which one test kills mid-stream.

Kept short on purpose (one thread per model, at most 32 new tokens per model and request)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from servers import fresh_llama_server  # noqa: F401  (fixture)
from tandem import DecodingSettings, PipelineConfig, Tandem
from tandem.config import TandemSettings
from tandem.policy import EffortSetting, StopRule
from tandem.server import create_app
from uvicorn_thread import uvicorn_thread

pytestmark = pytest.mark.real

KEY_ENV, KEY = "TANDEM_TEST_REAL_SERVER_KEY", "sk-tandem-real-test-key"
QUESTION = "Tom has 12 apples and buys 7 more. How many apples does he have? Explain step by step."
STORY = "Write a long story about a lighthouse keeper and the sea."
MODELS = ["tandem", "tandem-low", "tandem-medium", "tandem-high", "slm", "llm"]
# hand-over within a 32-token run: the LLM may write 8 / 16 / 24 tokens at effort low / medium / high
RULE = StopRule({"low": EffortSetting(8), "medium": EffortSetting(16), "high": EffortSetting(24)})
CONFIG = PipelineConfig(stage_budgets=(4, 8, 16, 24), max_unit_tokens=4,
                        decoding=DecodingSettings(llm_max_tokens=32, slm_max_tokens=32))


def smol(path: Path, name: str) -> Any:
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    return LlamaCppBackend(LlamaCppConfig(str(path), name=name, n_ctx=2048, n_threads=1))


def openai_client(root: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{root}/v1", api_key=key, max_retries=0, timeout=120,
                         http_client=openai.DefaultHttpxClient(trust_env=False))


def extra(obj: Any, name: str) -> Any:
    """A non-standard field of an openai response object (they keep unknown fields)."""
    return (obj.model_extra or {})[name]


def check_parts(parts: list[dict[str, Any]], content: str) -> None:
    assert parts and parts[0]["start"] == 0 and parts[-1]["end"] == len(content)
    assert all(a["end"] == b["start"] for a, b in zip(parts, parts[1:], strict=False))


def reset(*backends: Any) -> None:
    for b in backends:
        b.reset_cache()


@pytest.fixture(scope="module")
def served(smol_path: Path) -> Iterator[tuple[str, Tandem]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        tandem = Tandem(smol(smol_path, "smol-llm"), smol(smol_path, "smol-slm"), rule=RULE, config=CONFIG)
        settings = TandemSettings(server={"api_key_env": KEY_ENV, "max_tokens_cap": 32, "compare_estimate": 100})
        with uvicorn_thread(create_app(settings, tandem=tandem)) as root:
            yield root, tandem


def test_real_chat_completion_streamed_and_not_give_the_same_answer(served):
    root, tandem = served
    client = openai_client(root)
    messages = [{"role": "user", "content": QUESTION}]
    reset(tandem.llm, tandem.slm)
    resp = client.chat.completions.create(model="tandem-low", messages=messages, max_tokens=32)  # type: ignore[arg-type]
    content = resp.choices[0].message.content or ""
    t = extra(resp, "tandem")
    assert content.strip() and resp.model == "tandem-low" and resp.choices[0].finish_reason in ("stop", "length")
    assert t["method"] == "tandem" and t["effort"] == "low" and t["models"] == {"llm": "smol-llm", "slm": "smol-slm"}
    assert t["stop_reason"] == "budget" and 8 <= t["handover_tokens"] <= 12
    assert [p["role"] for p in t["parts"]] == ["llm", "slm"]
    check_parts(t["parts"], content)
    models = t["cost"]["models"]
    assert resp.usage is not None
    assert resp.usage.completion_tokens == models["llm"]["generated_tokens"] + models["slm"]["generated_tokens"]
    assert resp.usage.prompt_tokens == sum(m["prompt_tokens_computed"] + m["scored_tokens"] for m in models.values())
    assert t["flops_total"] > t["flops_generated"] > 0 and t["flops_relative_to_llm_alone"] > 0

    reset(tandem.llm, tandem.slm)  # the same cold start: greedy decoding gives the same text
    stream = client.chat.completions.create(model="tandem-low", messages=messages, max_tokens=32,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        resp.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == resp.usage.completion_tokens
    assert extra(last, "tandem")["parts"] == t["parts"]


def test_real_models_list_and_single_model_pass_through(served):
    root, _ = served
    client = openai_client(root)
    assert [m.id for m in client.models.list()] == MODELS
    resp = client.chat.completions.create(model="slm", messages=[{"role": "user", "content": STORY}], max_tokens=8)
    assert resp.choices[0].finish_reason == "length" and resp.usage is not None and resp.usage.completion_tokens == 8
    assert extra(resp, "tandem")["parts"][0]["model"] == "smol-slm"
    # a conversation: system prompt and an earlier turn are folded into the question
    convo = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What colour is the sky?"}]
    resp = client.chat.completions.create(model="llm", messages=convo, max_tokens=8)  # type: ignore[arg-type]
    assert resp.choices[0].message.content and extra(resp, "tandem")["method"] == "llm"


def test_real_errors_reach_the_openai_client_as_its_exceptions(served):
    root, _ = served
    messages = [{"role": "user", "content": QUESTION}]
    with pytest.raises(openai.AuthenticationError) as auth:
        openai_client(root, "sk-wrong").chat.completions.create(model="slm", messages=messages, max_tokens=4)
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    client = openai_client(root)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="slm", messages=messages, max_tokens=33)
    assert bad.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="slm", messages=messages, max_tokens=4, n=2)
    assert bad.value.param == "n"
    resp = client.chat.completions.create(model="slm", messages=messages, max_tokens=4)
    assert resp.choices[0].message.content


# ---- the LLM role behind a real llama-cpp-python server ------------------------------------------
def gguf_template(path: Path) -> str:
    import llama_cpp

    ll = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return str(ll.metadata["tokenizer.chat_template"])
    finally:
        ll.close()


def test_real_llm_over_http_and_killed_mid_stream(smol_path, fresh_llama_server):  # noqa: F811
    from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig

    server = fresh_llama_server()
    slm = smol(smol_path, "smol-slm")
    llm = OpenAIBackend(OpenAIBackendConfig(
        server.base_url, "smollm2", n_params=slm.info.n_params, n_ctx=2048, chat_template=gguf_template(smol_path),
        tokenizer_id=slm.info.tokenizer_id, timeout_s=60, max_retries=0, extra_body={"repeat_penalty": 1.0},
    ))
    assert llm.info.chat_template_id == slm.info.chat_template_id  # continue hand-over is allowed
    tandem = Tandem(llm, slm, rule=RULE, config=CONFIG)
    settings = TandemSettings(server={"fallback": "slm", "max_tokens_cap": 32})
    with uvicorn_thread(create_app(settings, tandem=tandem)) as root:
        client = openai_client(root, "unused")
        messages = [{"role": "user", "content": QUESTION}]
        chunks = list(client.chat.completions.create(model="tandem-low", messages=messages,  # type: ignore[arg-type]
                                                     max_tokens=32, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        t = extra(chunks[-1], "tandem")
        assert text.strip() and t["models"]["llm"] == "smollm2" and t["stop_reason"] == "budget"
        assert [p["role"] for p in t["parts"]] == ["llm", "slm"] and t["fallback"] == {"used": False}
        check_parts(t["parts"], text)
        assert t["cost"]["models"]["llm"]["generated_tokens"] == t["handover_tokens"]

        # the LLM's server dies mid-stream: an error event, never a finished answer
        stream = client.chat.completions.create(model="llm", messages=[{"role": "user", "content": STORY}],
                                                max_tokens=32, stream=True)
        received: list[Any] = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                received.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content:
                    server.kill()
        assert server.alive is False
        assert "backend" in str(info.value.message) and (info.value.body or {}).get("code") == "backend_error"
        assert not any(c.choices and c.choices[0].finish_reason for c in received)

        # with the LLM gone, the configured fallback answers with the SLM alone, and says so
        resp = client.chat.completions.create(model="tandem", messages=messages, max_tokens=16)  # type: ignore[arg-type]
        fb = extra(resp, "tandem")["fallback"]
        assert fb["used"] is True and fb["model"] == "slm" and "BackendUnavailable" in fb["reason"]
        assert resp.choices[0].message.content
        # the fallback applies to the llm model too; the slm model is unaffected
        resp = client.chat.completions.create(model="llm", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        assert extra(resp, "tandem")["fallback"]["used"] is True and extra(resp, "tandem")["method"] == "slm"
        resp = client.chat.completions.create(model="slm", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        assert extra(resp, "tandem")["fallback"] == {"used": False}


def test_real_runs_in_flight_over_http_answer_as_serial_runs(smol_path):
    """Both roles behind a real OpenAI-compatible server: the server keeps three pipelines in flight and
    each answer is the one the same request gets alone (greedy). llama-cpp-python's server interrupts
    a running request when another arrives unless told not to (its answers then end early)."""
    from servers import llama_cpp_server, require_server_deps

    require_server_deps()
    with llama_cpp_server(smol_path, extra_args=("--interrupt_requests", "false")) as server:
        _in_flight_answers_as_serial(smol_path, server)


def _in_flight_answers_as_serial(smol_path: Path, server: Any) -> None:
    import asyncio

    import httpx

    from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig

    def http(name: str) -> OpenAIBackend:
        return OpenAIBackend(OpenAIBackendConfig(
            server.base_url, "smollm2", name=name, n_params=134_515_008, n_ctx=2048,
            chat_template=gguf_template(smol_path), tokenizer_id="smollm2", timeout_s=120, max_retries=0,
            extra_body={"repeat_penalty": 1.0}))

    tandem = Tandem(http("smol-llm"), http("smol-slm"), rule=RULE, config=CONFIG)
    app = create_app(TandemSettings(server={"max_in_flight": 3, "max_tokens_cap": 32}), tandem=tandem)
    runner = app.state.tandem_state.runner
    assert runner.concurrency == 3
    questions = ["What is the capital of France?", "Write a short poem about the sea.",
                 "Tom has 3 apples and buys 7 more. How many apples does he have?"]
    peak = 0

    async def ask(c: httpx.AsyncClient, q: str) -> tuple[str, list[dict[str, Any]]]:
        r = await c.post("/v1/chat/completions", json={"model": "tandem-low", "max_tokens": 32,
                                                         "messages": [{"role": "user", "content": q}]})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["choices"][0]["message"]["content"], body["tandem"]["parts"]

    async def main() -> tuple[list[Any], list[Any]]:
        nonlocal peak
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=300) as c:
            serial = [await ask(c, q) for q in questions]
            tasks = [asyncio.create_task(ask(c, q)) for q in questions]
            while not all(t.done() for t in tasks):
                peak = max(peak, runner.active)
                await asyncio.sleep(0.01)
            return serial, [t.result() for t in tasks]

    serial, together = asyncio.run(main())
    assert peak == 3

    def llm_part(answer: tuple[str, list[dict[str, Any]]]) -> str:
        content, parts = answer
        return content[parts[0]["start"]:parts[0]["end"]]

    assert len({llm_part(a) for a in serial}) == 3  # three questions, three different starts
    for alone, beside in zip(serial, together, strict=True):
        # each run got its own question's LLM text (no run read another's), and the SLM went on from it:
        # no stream was cut short by another run (the engine queues them; its cache makes later tokens of
        # a queued run differ slightly, so the SLM's part is not compared)
        assert llm_part(beside) == llm_part(alone)
        assert [p["role"] for p in beside[1]] == ["llm", "slm"] and beside[1][1]["end"] - beside[1][1]["start"] > 20
