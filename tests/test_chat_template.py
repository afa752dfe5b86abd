"""Chat templates are rendered by one shared helper: the embedded llama.cpp backend and the
OpenAI-compatible backend (given a local `chat_template`) render alike and raise the same error for
the same failure."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
from tandem.errors import BackendError, ConfigError, InputError
from tandem.types import Message, Prompt

REFUSES = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}ok"
BROKEN = "{{ messages[0].content.nope.deeper }}"
ESCAPES = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
BAD_SYNTAX = "{% for m in messages %}"
BAD_MATH = "{{ 1 / 0 }}"
USER_ONLY = Prompt(messages=(Message("user", "hi"),))
CASES = [(REFUSES, InputError, "refuses this conversation: system first"), (BROKEN, BackendError, "failed"),
         (ESCAPES, BackendError, "failed"), (BAD_SYNTAX, BackendError, "failed"), (BAD_MATH, BackendError, "failed")]


def http_backend(template: str, **kw: Any) -> OpenAIBackend:
    cfg = OpenAIBackendConfig("http://127.0.0.1:9/v1", "m", n_params=1000, chat_template=template, **kw)
    return OpenAIBackend(cfg, transport=httpx.MockTransport(lambda r: httpx.Response(500)))


@pytest.mark.parametrize("template,kind,message", CASES)
def test_the_http_backend_raises_the_shared_error_per_failure(template: str, kind: type, message: str) -> None:
    b = http_backend(template, chat_template_id="given")  # an id given: nothing is rendered at construction
    with pytest.raises(kind, match=message) as exc:
        b.render(USER_ONLY)
    assert exc.value.__cause__ is not None  # raised from the library's error


@pytest.mark.parametrize("template,kind,message", [("{{ raise_exception('never') }}", InputError, "never"),
                                                    *CASES[1:]])
def test_a_template_that_cannot_render_the_probe_is_a_config_error_of_the_http_backend(
        template: str, kind: type, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        http_backend(template)  # the template id is derived by rendering a probe conversation
    assert isinstance(exc.value.__cause__, kind)


def test_the_shared_renderer_renders_like_both_backends() -> None:
    from tandem.backends.chat_template import render_chat

    tpl = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}" \
          "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render_chat(tpl, USER_ONLY.messages, owner="m", bos_token="<s>") == "<s><user>hi\n<assistant>"
    assert http_backend(tpl, bos_token="<s>").render(USER_ONLY) == "<s><user>hi\n<assistant>"


@pytest.mark.real
@pytest.mark.parametrize("template,kind,message", CASES)
def test_both_backends_raise_the_same_error_type_for_the_same_template(smol, template: str, kind: type,
                                                                       message: str) -> None:
    http = http_backend(template, chat_template_id="given")
    errors = []
    saved = smol._template
    try:
        smol._template = template
        for b in (smol, http):
            with pytest.raises(kind, match=message) as exc:
                b.render(USER_ONLY)
            errors.append(type(exc.value))
    finally:
        smol._template = saved
    assert errors[0] is errors[1]
