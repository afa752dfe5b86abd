"""A server's own endpoints beside its `/v1` API, each probed once: applying the chat template
and counting prompt tokens.

- Chat template: llama.cpp's `POST /apply-template`, else vLLM's `POST /tokenize` (with messages)
  + `/detokenize`; a server with neither needs a local `chat_template` in the config.
- Prompt tokens, when a stream reported no usage (a cancelled stream never gets the final usage
  chunk, and some servers, llama-cpp-python's, never send it): vLLM's `/tokenize`, llama.cpp's
  `/tokenize`, llama-cpp-python's `/extras/tokenize`; all counted as computed. A server with no
  tokenizer endpoint (OpenAI) leaves `prompt_tokens` at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BackendError, BackendProtocolError, Cancelled, UnsupportedError
from ..types import Message, Usage
from ._http import BackendHTTPError, HttpClient
from .guard import current_guard

# statuses with which a probe learns that the server has no such endpoint or field
ABSENT = frozenset({400, 404, 405, 422, 501})


class ServerEndpoints:
    """The optional endpoints of the server behind `http` that serves `model`."""

    def __init__(self, http: HttpClient, model: str) -> None:
        self.http, self.model = http, model
        self._render_via: str | None = None  # "apply-template", "tokenize" or "none", once probed
        self._count_via: int | None = None  # index into the tokenize probes, -1: none works
        self._absent_paths: set[str] = set()

    # ---- chat template ---------------------------------------------------------------------------
    def apply_template(self, messages: Sequence[Message]) -> str:
        """`messages` with the server's chat template applied and the assistant's turn opened."""
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        methods = ("apply-template", "tokenize") if self._render_via is None else (self._render_via,)
        for method in methods:
            if method == "none":
                break
            try:
                text = self._apply_template(msgs) if method == "apply-template" else self._tokenize_template(msgs)
            except BackendHTTPError as exc:
                if exc.status_code in ABSENT and self._render_via is None:
                    continue
                raise
            self._render_via = method
            return text
        self._render_via = "none"
        raise UnsupportedError(
            f"{self.http.name}: the server at {self.http.root} cannot apply the chat template (tried POST "
            "/apply-template and POST /tokenize with messages): set chat_template in the config"
        )

    def _apply_template(self, msgs: list[dict[str, str]]) -> str:
        data = self.http.post_json("/apply-template", {"messages": msgs}, root=True)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise BackendProtocolError(f"{self.http.name}: /apply-template answered without a prompt")
        return prompt

    def _tokenize_template(self, msgs: list[dict[str, str]]) -> str:
        model = self.model
        data = self.http.post_json(
            "/tokenize",
            {"model": model, "messages": msgs, "add_generation_prompt": True, "add_special_tokens": False},
            root=True,
        )
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise BackendProtocolError(f"{self.http.name}: /tokenize answered without tokens")
        out = self.http.post_json("/detokenize", {"model": model, "tokens": tokens}, root=True)
        prompt = out.get("prompt")
        if not isinstance(prompt, str):
            raise BackendProtocolError(f"{self.http.name}: /detokenize answered without a prompt")
        return prompt

    # ---- prompt tokens ---------------------------------------------------------------------------
    def count_prompt(self, count_body: dict[str, Any], usage: Usage) -> None:
        """Prompt tokens when the server reported no usage: asked from the server's tokenizer
        endpoint; all counted as computed. Best effort: left at 0 when the server has no such
        endpoint, or the run is over."""
        if self._count_via == -1:
            return
        guard = current_guard()
        if guard is not None and (guard.interrupted or guard.expired()):
            return  # the run is over: no more calls for it
        if "messages" in count_body:
            probes = [("/tokenize", {"model": self.model, **count_body})]
        else:
            prompt = count_body["prompt"]
            probes = [
                ("/tokenize", {"model": self.model, "prompt": prompt}),  # vLLM, SGLang
                ("/tokenize", {"content": prompt, "add_special": True}),  # llama.cpp's llama-server
                ("/extras/tokenize", {"model": self.model, "input": prompt}),  # llama-cpp-python
            ]
        order = range(len(probes)) if self._count_via is None else [self._count_via]
        for i in order:
            path, body = probes[i]
            if path in self._absent_paths:
                continue
            try:
                data = self.http.post_json(path, body, root=True, retry=False)
            except BackendHTTPError as exc:
                if exc.status_code in (404, 405):
                    self._absent_paths.add(path)
                if exc.status_code in ABSENT:
                    continue
                return
            except (BackendError, Cancelled):
                return
            n = data.get("count")
            tokens = data.get("tokens")
            if not isinstance(n, int):
                n = len(tokens) if isinstance(tokens, list) else None
            if n is None:
                continue
            self._count_via = i
            usage.prompt_tokens = usage.computed_prompt_tokens = n
            usage.cached_prompt_tokens = 0
            return
        if self._count_via is None:
            self._count_via = -1
