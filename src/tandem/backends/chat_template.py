"""Chat templates (Jinja, as GGUF metadata and Hugging Face tokenizers carry them), rendered in
jinja2's immutable sandbox: the one implementation for every backend that renders prompts itself
(the embedded llama.cpp backend, and the OpenAI-compatible one given a local `chat_template`).

The same failure is the same error, whichever backend renders:

- the template refuses the conversation (its `raise_exception(...)`, e.g. "roles must alternate")
  -> `ChatTemplateRefused`, an `InputError`: the request is at fault;
- the template does not compile, or fails while rendering (an undefined attribute, something the
  sandbox forbids) -> `ChatTemplateFailed`, a `BackendError`: the model's template is at fault;
- jinja2 is not installed -> `ConfigError`.

A chat template is identified (`template_id`) by how it renders one probe conversation, so that two
templates differing only in branches tandem never takes (tools, say) count as one, and an endpoint
and an embedded model with the same template compare equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from ..errors import BackendError, ConfigError, InputError
from ..types import Message, Prompt

__all__ = ["TEMPLATE_PROBE", "ChatTemplateFailed", "ChatTemplateRefused", "render_chat", "template_id"]

TEMPLATE_PROBE = Prompt(
    messages=(Message("system", "S"), Message("user", "U"), Message("assistant", "A"), Message("user", "V")),
    assistant_prefix="P",
)


class ChatTemplateRefused(InputError):
    """The chat template refuses the conversation (its `raise_exception`)."""


class ChatTemplateFailed(BackendError):
    """The chat template does not compile or fails while rendering."""


class _Refusal(Exception):
    """What the template's `raise_exception` raises (internal signal, translated in `render_chat`)."""


def _raise_exception(message: str) -> None:
    raise _Refusal(message)


@lru_cache(maxsize=1)
def _environment() -> Any:
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise ConfigError("rendering a chat template needs jinja2: pip install jinja2") from exc
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    return _environment().from_string(source)


def render_chat(source: str, messages: Sequence[Message], *, owner: str, bos_token: str = "",
                eos_token: str = "") -> str:
    """`messages` rendered by the template `source` with the assistant's turn opened. `owner` names
    the model in error messages."""
    _environment()  # ConfigError without jinja2
    try:
        return str(_compiled(source).render(
            messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True,
            bos_token=bos_token, eos_token=eos_token,
        ))
    except _Refusal as exc:
        raise ChatTemplateRefused(f"the chat template of {owner} refuses this conversation: {exc}") from exc
    except Exception as exc:  # jinja2's TemplateError, or what the template's own code raised (1 / 0)
        raise ChatTemplateFailed(f"the chat template of {owner} failed: {exc}") from exc


def template_id(render: Callable[[Prompt], str]) -> str:
    """The identity of a chat template: a hash of how `render` renders `TEMPLATE_PROBE`."""
    return hashlib.sha256(render(TEMPLATE_PROBE).encode("utf-8")).hexdigest()[:16]
