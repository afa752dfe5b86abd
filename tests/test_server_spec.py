"""How a validated request becomes its run (`run_spec_for`), without the HTTP layer."""

from __future__ import annotations

from typing import Any

import pytest

from tandem import DecodingSettings, PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.config import ServerSettings
from tandem.server.schemas import ChatCompletionRequest, RequestError
from tandem.server.spec import run_spec_for


def tandem(slm_tokenizer: str = "scripted-words", **decoding: Any) -> Tandem:
    return Tandem(ScriptedBackend("a b", name="big"), ScriptedBackend("c", name="small", tokenizer_id=slm_tokenizer),
                  config=PipelineConfig(decoding=DecodingSettings(**decoding)))


def request(model: str = "tandem", **kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "Q?"}],
                                                 **kw})


def refusal(req: ChatCompletionRequest, t: Tandem | None = None, **srv: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        run_spec_for(req, t or tandem(), ServerSettings(**srv), "r")
    assert info.value.status == 400 and info.value.code == "invalid_value"
    return info.value


def test_a_tandem_request_carries_its_options_to_the_run():
    spec = run_spec_for(request("tandem-high", handover="hint", stage_budgets=[20, 10, 20], max_tokens=50,
                                temperature=0, seed=3, stream=True),
                        tandem(), ServerSettings(fallback="slm"), "rid-1")
    assert (spec.question, spec.method, spec.stream, spec.fallback, spec.request_id, spec.handover) == \
        ("Q?", "tandem", True, "slm", "rid-1", "hint")
    assert spec.overrides == {"effort": "high", "handover": "hint", "stage_budgets": (10, 20), "llm_max_tokens": 50,
                              "slm_max_tokens": 50, "temperature": 0.0, "seed": 3}


def test_a_single_model_request_ignores_the_tandem_options_it_cannot_use():
    spec = run_spec_for(request("slm", effort="low", stage_budgets=[99999]), tandem(), ServerSettings(), "r")
    assert spec.method == "slm" and spec.overrides == {}


def test_the_configured_token_limits_are_cut_to_the_cap():
    spec = run_spec_for(request("llm"), tandem(llm_max_tokens=500, slm_max_tokens=100), ServerSettings(
        max_tokens_cap=200), "r")
    assert spec.overrides == {"llm_max_tokens": 200}


def test_refusals_name_the_field_and_come_in_a_fixed_order():
    assert refusal(request("tandem-low", effort="high", max_tokens=10**6)).param == "effort"
    assert refusal(request("tandem-low", reasoning_effort="high")).param == "reasoning_effort"
    assert refusal(request("tandem", handover="continue"), tandem(slm_tokenizer="other")).param == "handover"
    assert refusal(request(stage_budgets=[300], max_tokens=10**6), max_tokens_cap=200).param == "stage_budgets"
    assert refusal(request(max_completion_tokens=201), max_tokens_cap=200).param == "max_completion_tokens"
    err = refusal(request("slm", max_tokens=201), max_tokens_cap=200)
    assert err.param == "max_tokens" and err.message == "max_tokens may be at most 200 on this server"
    # hint mode needs no shared tokenizer
    assert run_spec_for(request(handover="hint"), tandem(slm_tokenizer="other"), ServerSettings(), "r").handover == \
        "hint"
