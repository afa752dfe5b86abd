"""A reasoning LLM behind an OpenAI-compatible endpoint: the thought streamed in its own field
(`delta.reasoning`, `delta.reasoning_content`), written as tandem's text with `</think>` where the
answer starts; token counts of streams without usage; an endpoint that hides the thought."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tandem.backends._wire import THOUGHT_CLOSE, THOUGHT_OPEN, apply_usage
from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
from tandem.backends.scripted import ScriptedBackend
from tandem.backends.tokenizers import WordTokenizer
from tandem.errors import UnsupportedError
from tandem.pipeline import THINK_OPEN, THINK_SEP, DecodingSettings, PipelineConfig, Tandem
from tandem.policy import EffortSetting, StopRule
from tandem.types import GenerationRequest, Message, Prompt, Usage

PROMPT = Prompt((Message("user", "Tom has 3 apples and buys 4 more. How many?"),))
THOUGHT = ["Tom", " has", " 3", ".", " He", " buys", " 4", ".", " So", " 7", "."]
ANSWER = ["The", " answer", " is", " \\boxed{7}", "."]


def chunk(text: str = "", *, field: str = "content", lp: float | None = -0.5, finish: str | None = None,
          top: int = 2) -> dict[str, Any]:
    """One chat stream chunk: `text` in `field` (content, reasoning or reasoning_content), one log-prob
    entry unless `lp` is None."""
    delta: dict[str, Any] = {"content": None}
    if field != "none":
        delta[field] = text
    logprobs = None
    if lp is not None:
        alts = [{"token": f"alt{i}", "logprob": lp - 1.0 - i} for i in range(top)]
        logprobs = {"content": [{"token": text, "logprob": lp, "top_logprobs": alts}]}
    return {"choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def usage_chunk(prompt: int, completion: int, reasoning: int | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return {"choices": [], "usage": u}


def sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"


def reasoning_stream(thought: list[str], answer: list[str], *, field: str = "reasoning", lp: float | None = -0.5,
                     usage: tuple[int, int, int | None] | None = (12, 0, None)) -> list[dict[str, Any]]:
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [chunk(t, field=field, lp=lp) for t in thought]
    events += [chunk(t, lp=lp, finish="stop" if i == len(answer) - 1 else None) for i, t in enumerate(answer)]
    if not answer:
        events.append(chunk("", field="none", lp=None, finish="length"))
    if usage is not None:
        n = usage[1] or len(thought) + len(answer)
        events.append(usage_chunk(usage[0], n, usage[2]))
    return events


class Endpoint:
    """A mock OpenAI-compatible server: chat completions stream `events`; /tokenize counts 12 tokens."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if request.url.path.endswith("/tokenize"):
            return httpx.Response(200, json={"count": 12})
        return httpx.Response(200, content=sse(self.events), headers={"content-type": "text/event-stream"})

    @property
    def generations(self) -> list[dict[str, Any]]:
        return [b for b in self.bodies if "stream" in b]


def backend(endpoint: Callable[[httpx.Request], httpx.Response], **kw: Any) -> OpenAIBackend:
    tokenizer = kw.pop("tokenizer", None)
    cfg: dict[str, Any] = dict(base_url="http://127.0.0.1:9/v1", model="r1", n_params=32_000_000_000, api="chat",
                               reasoning=True, retry_backoff_s=0.0, max_retries=0)
    cfg.update(kw)
    return OpenAIBackend(OpenAIBackendConfig(**cfg), transport=httpx.MockTransport(endpoint), tokenizer=tokenizer)


def texts(b: OpenAIBackend, **kw: Any) -> tuple[list[str], Any]:
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=64, **kw))
    steps = list(stream)
    return [s.text for s in steps], stream


# ---- the thought in its own field ------------------------------------------------------------------
def test_the_markers_are_the_pipelines() -> None:
    assert THOUGHT_CLOSE == THINK_SEP and THOUGHT_OPEN == THINK_OPEN


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_thought_in_its_own_field_streams_as_text_then_closes_before_the_answer(field: str) -> None:
    b = backend(Endpoint(reasoning_stream(THOUGHT, ANSWER, field=field)))
    assert b.info.thinks
    got, stream = texts(b)
    assert got[: len(THOUGHT)] == THOUGHT  # the thought's own tokens, one step each
    assert got[len(THOUGHT)] == THOUGHT_CLOSE + ANSWER[0]  # the marker rides on the first answer token
    assert got[len(THOUGHT) + 1:] == ANSWER[1:]
    assert len(got) == len(THOUGHT) + len(ANSWER) == stream.usage.generated_tokens
    assert stream.finish_reason == "stop"


def test_both_fields_in_one_chunk_give_the_thought_then_the_answer() -> None:
    events = [chunk("Tom has 3.", field="reasoning"),
              {"choices": [{"index": 0, "delta": {"reasoning": " So 7.", "content": "It is 7."},
                            "logprobs": {"content": [{"token": "x", "logprob": -0.1, "top_logprobs": []}]},
                            "finish_reason": "stop"}]}]
    got, stream = texts(backend(Endpoint(events)))
    assert "".join(got) == "Tom has 3. So 7." + THOUGHT_CLOSE + "It is 7."
    assert stream.usage.generated_tokens == 2  # one log-prob entry each chunk (no usage reported)


def test_an_undeclared_model_writes_its_thought_between_tags() -> None:
    b = backend(Endpoint(reasoning_stream(THOUGHT, ANSWER)), reasoning=False)
    assert not b.info.thinks
    got, _ = texts(b)
    assert "".join(got) == THOUGHT_OPEN + "".join(THOUGHT) + THOUGHT_CLOSE + "".join(ANSWER)


def test_a_plain_chat_stream_is_unchanged() -> None:
    got, _ = texts(backend(Endpoint(reasoning_stream([], ANSWER)), reasoning=False))
    assert got == ANSWER


def test_completions_api_reasoning_model_keeps_its_raw_text() -> None:
    """Over the completions API the thought is the raw text up to `</think>`: passed through as it is."""
    raw = ["I", " think", "</think>", "\n\n", "7"]
    events = [{"choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]} for t in raw]
    events[-1]["choices"][0]["finish_reason"] = "stop"
    b = backend(Endpoint(events), api="completions", chat_template="{{ messages[0].content }}")
    assert b.info.thinks
    got, _ = texts(b)
    assert got == raw


# ---- token counts -------------------------------------------------------------------------------------
def test_a_cancelled_thought_counts_its_log_prob_entries_not_zero() -> None:
    b = backend(Endpoint(reasoning_stream(THOUGHT, ANSWER, usage=None)))
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=64))
    got = [next(stream).text for _ in range(5)]
    stream.close()
    assert got == THOUGHT[:5] and stream.cancelled
    assert stream.usage.generated_tokens == 5
    assert stream.usage.prompt_tokens == 12  # counted on the server's /tokenize


def test_without_log_probs_a_configured_tokenizer_counts_the_received_text() -> None:
    words = ["Tom has", " 3 apples", " and", " 4 more."]  # chunks of several words, no log-probs
    events = reasoning_stream(words, ["It is", " 7."], lp=None, usage=None)
    b = backend(Endpoint(events), tokenizer=WordTokenizer())
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=64))
    [next(stream) for _ in range(3)]
    stream.close()
    assert stream.usage.generated_tokens == 5  # "Tom has 3 apples and": five words
    # no tokenizer: one a chunk of text, never 0
    b = backend(Endpoint(events))
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=64))
    [next(stream) for _ in range(3)]
    stream.close()
    assert stream.usage.generated_tokens == 3


def test_usage_that_counts_reasoning_tokens_apart_has_them_added() -> None:
    u = Usage()
    assert apply_usage(u, {"prompt_tokens": 5, "completion_tokens": 40,
                           "completion_tokens_details": {"reasoning_tokens": 30}})
    assert u.generated_tokens == 40  # included, as OpenAI, DeepSeek and vLLM count them
    apply_usage(u, {"prompt_tokens": 5, "completion_tokens": 10,
                    "completion_tokens_details": {"reasoning_tokens": 30}})
    assert u.generated_tokens == 40


# ---- an endpoint that hides the thought --------------------------------------------------------------
HIDDEN = reasoning_stream([], ANSWER, lp=None, usage=(12, 305, 300))


def test_a_hidden_thought_alone_is_an_empty_thought_and_its_tokens_are_paid() -> None:
    b = backend(Endpoint(HIDDEN))
    got, stream = texts(b)
    assert "".join(got) == THOUGHT_CLOSE + "".join(ANSWER)
    assert stream.usage.generated_tokens == 305


def test_a_hidden_thought_is_refused_for_a_handover_and_still_counted() -> None:
    endpoint = Endpoint(HIDDEN)
    b = backend(endpoint)
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=64, thought_handover=True))
    with pytest.raises(UnsupportedError, match="hides the model's thought .*300 reasoning tokens"):
        next(stream)  # nothing of the answer was yielded as if it were a thought
    assert stream.usage.generated_tokens == 305
    n = len(endpoint.generations)
    with pytest.raises(UnsupportedError, match="hides"):  # known now: refused before any request
        b.stream(GenerationRequest(PROMPT, max_tokens=64, thought_handover=True))
    assert len(endpoint.generations) == n


# vLLM with `include_reasoning: false` and a parser that cannot count reasoning tokens: no thought, no
# log-probs, no reasoning tokens in the usage, only more generated tokens than it streamed
UNREPORTED = reasoning_stream([], ANSWER, lp=None, usage=(12, 305, 0))
UNREPORTED_NO_ANSWER = reasoning_stream([], [], lp=None, usage=(12, 48, 0))


@pytest.mark.parametrize(("events", "hidden"), [(UNREPORTED, 300), (UNREPORTED_NO_ANSWER, 48)])
def test_a_thought_hidden_without_its_count_is_refused_and_counted(events: list[dict[str, Any]],
                                                                   hidden: int) -> None:
    b = backend(Endpoint(events))
    stream = b.stream(GenerationRequest(PROMPT, max_tokens=400, thought_handover=True))
    with pytest.raises(UnsupportedError, match=f"hides the model's thought .{hidden} reasoning tokens"):
        next(stream)
    assert stream.usage.generated_tokens == events[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize(("streamed", "reported"), [(5, 6), (5, 10), (5, 21), (0, 16), (40, 60)])
def test_a_few_tokens_more_than_streamed_are_no_hidden_thought(streamed: int, reported: int) -> None:
    """Chunks of several tokens, an end-of-text token without text: up to as many tokens again as
    streamed, and up to TOKEN_SLACK, are not read as a hidden thought."""
    answer = [f" w{i}" for i in range(streamed)]
    b = backend(Endpoint(reasoning_stream([], answer, lp=None, usage=(12, reported, 0))))
    got, stream = texts(b, thought_handover=True)
    assert "".join(got) == (THOUGHT_CLOSE + "".join(answer) if answer else "")
    assert stream.usage.generated_tokens == reported


def test_an_empty_thought_is_read_ahead_then_yielded() -> None:
    b = backend(Endpoint(reasoning_stream([], ANSWER, usage=(12, 5, 0))))
    got, stream = texts(b, thought_handover=True)
    assert "".join(got) == THOUGHT_CLOSE + "".join(ANSWER) and stream.finish_reason == "stop"


# ---- the pipeline over a reasoning endpoint ------------------------------------------------------------
class Recording(ScriptedBackend):
    def __init__(self, reply: str) -> None:
        super().__init__(reply, name="slm")
        self.requests: list[GenerationRequest] = []

    def stream(self, request: GenerationRequest) -> Any:
        self.requests.append(request)
        return super().stream(request)


def _tandem(events: list[dict[str, Any]], budget: int) -> tuple[Tandem, Recording]:
    slm = Recording("The answer is \\boxed{7}.")
    cfg = PipelineConfig(effort="low", stage_budgets=(budget,), max_unit_tokens=2, shadow=False,
                         decoding=DecodingSettings(llm_max_tokens=64, slm_max_tokens=32))
    rule = StopRule({"low": EffortSetting(max_budget=budget)})
    return Tandem(backend(Endpoint(events)), slm, rule=rule, config=cfg), slm


def test_tandem_hands_the_streamed_thought_to_the_slm() -> None:
    t, slm = _tandem(reasoning_stream(THOUGHT, ANSWER, usage=None), budget=4)
    r = t.solve("Tom has 3 apples and buys 4 more. How many?")
    assert r.stop_reason == "budget" and r.handover_tokens == 5  # the token that showed the unit's end
    prefix = slm.requests[-1].prompt.assistant_prefix
    assert prefix.startswith("Tom has 3.") and r.llm_text == "Tom has 3."
    assert r.text == THINK_OPEN + "Tom has 3." + THINK_SEP + "The answer is \\boxed{7}."
    assert r.answer.answer == "7"
    assert r.cost.models["llm"].generated_tokens == 5  # counted from the log-prob entries: not 0


def test_tandem_sees_the_thought_close_where_the_answer_starts() -> None:
    t, slm = _tandem(reasoning_stream(THOUGHT, ANSWER, usage=(12, 0, None)), budget=60)
    r = t.solve("Tom has 3 apples and buys 4 more. How many?")
    assert r.stop_reason == "llm_finished" and not slm.requests
    assert r.text == THINK_OPEN + "".join(THOUGHT) + THINK_SEP + "".join(ANSWER)
    assert r.answer.answer == "7"
    thought_end = r.checkpoints[-1]
    assert thought_end.llm_tokens == len(THOUGHT) + 1  # the thought's tokens and the first answer token
    assert r.cost.models["llm"].generated_tokens == len(THOUGHT) + len(ANSWER)


def test_tandem_refuses_a_hidden_thought_and_the_llm_alone_answers() -> None:
    t, _ = _tandem(HIDDEN, budget=4)
    with pytest.raises(UnsupportedError, match="hides"):
        t.solve("Tom has 3 apples and buys 4 more. How many?")
    t, _ = _tandem(HIDDEN, budget=4)
    r = t.solve("Tom has 3 apples and buys 4 more. How many?", method="llm")
    assert r.answer.answer == "7" and r.cost.models["llm"].generated_tokens == 305


def test_settings_declare_a_reasoning_endpoint_and_its_counting_tokenizer() -> None:
    from tandem.backends import build_backend
    from tandem.config import BackendSettings, load_settings
    from tandem.errors import ConfigError

    b = build_backend(BackendSettings(kind="openai", model="r1", base_url="http://127.0.0.1:9/v1", n_params=10,
                                      api="chat", reasoning=True, count_tokenizer="words"))
    try:
        assert b.info.thinks and isinstance(b._tokenizer, WordTokenizer)
    finally:
        b.close()
    with pytest.raises(ConfigError, match="reasoning is an option of openai backends"):
        load_settings(None, {"llm": {"model": "qwen2.5-coder-1.5b", "reasoning": True}})
    with pytest.raises(ConfigError, match="count_tokenizer"):
        load_settings(None, {"llm": {"model": "qwen2.5-coder-1.5b", "count_tokenizer": "words"}})


def test_a_probe_of_a_hidden_thought_is_refused_not_recorded_empty() -> None:
    from tandem.bench.graders import grade_gsm8k
    from tandem.bench.probe import ProbeConfig, Prober
    from tandem.types import Problem

    prober = Prober(backend(Endpoint(HIDDEN)), Recording("The answer is \\boxed{7}."), grade_gsm8k,
                    ProbeConfig(stage_budgets=(4,), decoding=DecodingSettings(llm_max_tokens=64, slm_max_tokens=32)))
    with pytest.raises(UnsupportedError, match="hides"):
        prober.probe(Problem("p", "Tom has 3 apples and buys 4 more. How many?", "7"))
