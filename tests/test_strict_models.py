"""The one strict pydantic base and the one validation-error formatter, shared by the settings, the
classifier file and the server's API models."""

from __future__ import annotations

import pydantic
import pytest
from pydantic import ValidationError

from tandem.classifier import ModelRef
from tandem.config import PipelineSettings, StrictModel, format_validation_error
from tandem.server.schemas import ChatCompletionRequest, ChatMessage, ModelCard


def _error(model: type[pydantic.BaseModel], data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return info.value


@pytest.mark.parametrize("model,data", [
    (PipelineSettings, {"bogus": 1}),
    (ModelRef, {"name": "m", "n_params": 1, "bogus": 1}),
    (ChatMessage, {"role": "user", "content": "q", "bogus": 1}),
    (ModelCard, {"id": "m", "created": 0, "tandem": {}, "bogus": 1}),
])
def test_every_family_refuses_unknown_fields_and_is_immutable(model, data):
    assert issubclass(model, StrictModel)
    assert _error(model, data).errors()[0]["type"] == "extra_forbidden"
    ok = model.model_validate({k: v for k, v in data.items() if k != "bogus"})
    field = next(iter(model.model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(ok, field, getattr(ok, field))


def test_server_requests_take_json_types_as_sent():
    msgs = [{"role": "user", "content": "q"}]
    assert ChatCompletionRequest.model_validate({"model": "m", "messages": msgs, "stream": True}).stream
    for field, value in (("stream", "true"), ("temperature", "0.5"), ("temperature", float("nan"))):
        err = _error(ChatCompletionRequest, {"model": "m", "messages": msgs, field: value}).errors()[0]
        assert err["loc"] == (field,)
    # settings coerce (a TOML or YAML value may come as text); requests do not
    assert PipelineSettings.model_validate({"stage_budgets": ["8"]}).stage_budgets == (8,)


def test_the_formatter_names_every_key_in_one_line():
    exc = _error(PipelineSettings, {"bogus": 1, "stage_budgets": "x", "speed": 2})
    msg = format_validation_error(exc, "tandem.toml")
    assert msg.startswith("tandem.toml: invalid configuration: ")
    assert "bogus: unknown key" in msg and "speed: unknown key" in msg and "stage_budgets: " in msg
    assert "\n" not in msg and "more" not in msg


def test_the_formatter_can_name_what_it_read_and_cut_the_list():
    exc = _error(PipelineSettings, {f"k{i}": i for i in range(9)})
    msg = format_validation_error(exc, "c.json", "classifier file", limit=6)
    assert msg == ("c.json: invalid classifier file: " + "; ".join(f"k{i}: unknown key" for i in range(6))
                   + "; and 3 more")
    exc = _error(PipelineSettings, {f"k{i}": i for i in range(6)})
    assert not format_validation_error(exc, "c.json", "classifier file", limit=6).endswith("more")
