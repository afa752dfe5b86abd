"""Each backend translates its libraries' exceptions into the project's errors at one boundary, with
the library's exception as the cause: every failure class is fed in, and the project error type is
what comes out."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tandem.backends.openai_http import BackendHTTPError, OpenAIBackend, OpenAIBackendConfig
from tandem.errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    InputError,
    ModelError,
    TandemError,
)
from tandem.types import GenerationRequest, Message, Prompt

PROMPT = Prompt((Message("user", "What is 2+3?"),))
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


# ---- the OpenAI-compatible HTTP backend -------------------------------------------------------------
def http_backend(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> OpenAIBackend:
    cfg: dict[str, Any] = dict(base_url="http://127.0.0.1:9/v1", model="m", n_params=1000, chat_template=TEMPLATE,
                               max_retries=0, count_prompt_tokens=False)
    cfg.update(kw)
    return OpenAIBackend(OpenAIBackendConfig(**cfg), transport=httpx.MockTransport(handler))


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc
    return handler


class _Body(httpx.SyncByteStream):
    """A response body that sends `first`, then fails with `exc`."""

    def __init__(self, first: bytes, exc: Exception) -> None:
        self.first, self.exc = first, exc

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise self.exc


def sse(*events: Any) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def answering(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda r: httpx.Response(status, content=body)


def chunk_with(logprobs: Any = None, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": None}], **extra}


def drain(b: OpenAIBackend) -> list[Any]:
    return list(b.stream(GenerationRequest(PROMPT, max_tokens=4)))


def score(b: OpenAIBackend) -> Any:
    return b.score("ab")


def echo(**lp: Any) -> bytes:
    base: dict[str, Any] = {"tokens": ["a", "b"], "token_logprobs": [None, -1.0], "top_logprobs": [None, {"b": -1.0}],
                            "text_offset": [0, 1]}
    base.update(lp)
    return json.dumps({"choices": [{"index": 0, "text": "ab", "logprobs": base}]}).encode()


def prompt_lps(entries: list[Any]) -> bytes:
    return json.dumps({"choices": [{"index": 0, "text": "ab", "logprobs": None,
                                    "prompt_logprobs": entries}]}).encode()


HTTP_CASES = [
    # httpx, before an answer
    ("connect-error", raising(httpx.ConnectError("refused")), drain, BackendUnavailable),
    ("connect-timeout", raising(httpx.ConnectTimeout("slow")), drain, BackendTimeout),
    ("read-timeout", raising(httpx.ReadTimeout("slow")), drain, BackendTimeout),
    ("remote-protocol", raising(httpx.RemoteProtocolError("bad")), score, BackendUnavailable),
    ("unsupported-protocol", raising(httpx.UnsupportedProtocol("gopher")), drain, BackendUnavailable),
    ("other-httpx", raising(httpx.DecodingError("gzip")), drain, BackendError),
    ("http-status", answering(b'{"error": {"message": "no"}}', 400), drain, BackendHTTPError),
    # httpx, once the answer has begun
    ("read-error-mid-stream", lambda r: httpx.Response(200, stream=_Body(sse(chunk_with()), httpx.ReadError("reset"))),
     drain, BackendError),
    ("read-timeout-mid-stream", lambda r: httpx.Response(200, stream=_Body(b"data: ", httpx.ReadTimeout("slow"))),
     drain, BackendTimeout),
    # JSON and text encodings
    ("json-chunk", answering(sse("{not json")), drain, BackendProtocolError),
    ("json-not-an-object", answering(sse("[1, 2]")), drain, BackendProtocolError),
    ("json-answer", answering(b"{not json"), score, BackendProtocolError),
    ("utf8-answer", answering(b'{"choices": "\xff"}'), score, BackendProtocolError),
    ("sse-line-too-long", answering(b"data: " + b"x" * (1 << 20)), drain, BackendProtocolError),
    # values of the wrong type inside well-formed JSON
    ("stream-top-logprob-not-a-number",
     answering(sse(chunk_with({"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": [{"a": "x"}]}))),
     drain, BackendProtocolError),
    ("stream-logprobs-list-not-a-list",
     answering(sse(chunk_with({"tokens": ["a"], "token_logprobs": 5, "top_logprobs": None}))),
     drain, BackendProtocolError),
    ("stream-usage-not-a-number", answering(sse(chunk_with(usage={"prompt_tokens": "many"}))), drain,
     BackendProtocolError),
    ("echo-offset-not-a-number", answering(echo(text_offset=["x", 1])), score, BackendProtocolError),
    ("echo-top-logprob-not-a-number", answering(echo(top_logprobs=[None, {"b": [1]}])), score, BackendProtocolError),
    ("prompt-logprobs-without-logprob", answering(prompt_lps([None, {"7": {"decoded_token": "b"}}])), score,
     BackendProtocolError),
]


@pytest.mark.parametrize("name,handler,call,kind", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_the_http_backend_translates_every_failure_class(name: str, handler: Any, call: Any, kind: type) -> None:
    b = http_backend(handler)
    try:
        with pytest.raises(TandemError) as exc:
            call(b)
    finally:
        b.close()
    assert isinstance(exc.value, kind), repr(exc.value)
    if name not in ("http-status", "json-not-an-object"):  # those are checks of ours, no library's exception
        assert exc.value.__cause__ is not None, repr(exc.value)


def test_a_passed_deadline_of_the_http_backend_is_a_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.15)
        return httpx.Response(200, content=sse(chunk_with()))

    b = http_backend(slow, timeout_s=0.05)
    with pytest.raises(BackendTimeout) as exc:
        drain(b)
    assert exc.value.__cause__ is not None


def test_a_template_the_http_backend_renders_fails_as_the_shared_errors() -> None:
    refusing = http_backend(answering(b""), chat_template="{{ raise_exception('no') }}", chat_template_id="t")
    broken = http_backend(answering(b""), chat_template="{{ 1 / 0 }}", chat_template_id="t")
    with pytest.raises(InputError):
        drain(refusing)
    with pytest.raises(BackendError):
        drain(broken)


# ---- the embedded llama.cpp backend -----------------------------------------------------------------
def test_llamacpp_without_its_library_is_a_backend_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(BackendError, match="not installed") as exc:
        LlamaCppBackend(LlamaCppConfig(str(tmp_path / "m.gguf")))
    assert isinstance(exc.value.__cause__, ImportError)


@pytest.mark.parametrize("failure", [ValueError("bad file"), RuntimeError("bad file")])
def test_an_engine_that_cannot_load_the_file_is_a_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                              failure: Exception) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    def fail(**kw: Any) -> None:
        raise failure

    monkeypatch.setattr(llama_cpp, "Llama", fail)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="bad file") as exc:
        LlamaCppBackend(LlamaCppConfig(str(path), checksum="given"))
    assert exc.value.__cause__ is failure


def _fail_with(failure: Exception) -> Callable[..., Any]:
    def fail(*args: Any, **kw: Any) -> Any:
        raise failure
    return fail


def _generator_failing_with(failure: Exception) -> Callable[..., Any]:
    def gen(*args: Any, **kw: Any) -> Iterator[Any]:
        raise failure
        yield  # a generator
    return gen


@pytest.mark.real
@pytest.mark.parametrize("failure", [ValueError("engine"), RuntimeError("engine")], ids=["ValueError", "RuntimeError"])
@pytest.mark.parametrize("where", ["score", "generate", "tokenize-prompt", "tokenize"])
def test_engine_failures_of_llamacpp_are_backend_errors(smol: Any, monkeypatch: pytest.MonkeyPatch, failure: Exception,
                                                        where: str) -> None:
    adapter = smol.adapter
    if where == "score":
        monkeypatch.setattr(adapter, "score", _fail_with(failure))
        call: Callable[[], Any] = lambda: smol.score("hello")  # noqa: E731
    elif where == "generate":
        monkeypatch.setattr(adapter, "generate", _generator_failing_with(failure))
        call = lambda: list(smol.stream(GenerationRequest(PROMPT, max_tokens=2)))  # noqa: E731
    else:
        monkeypatch.setattr(adapter, "tokenize", _fail_with(failure))
        call = (lambda: smol.tokenize("hello")) if where == "tokenize" else \
            (lambda: smol.stream(GenerationRequest(PROMPT, max_tokens=2)))
    with pytest.raises(BackendError, match="llama.cpp failed") as exc:
        call()
    assert exc.value.__cause__ is failure


@pytest.mark.real
def test_text_utf8_cannot_encode_is_an_input_error_of_llamacpp(smol: Any) -> None:
    bad = "x \ud800 y"  # a lone surrogate, as a JSON request may carry
    calls = [lambda: smol.score(bad), lambda: smol.tokenize(bad),
             lambda: smol.stream(GenerationRequest(Prompt((Message("user", bad),)), max_tokens=2))]
    for call in calls:
        with pytest.raises(InputError, match="cannot be encoded as UTF-8") as exc:
            call()
        assert isinstance(exc.value.__cause__, UnicodeEncodeError)


# ---- the recorded backend -----------------------------------------------------------------------------
def _recordings(tmp_path: Any, raw: bytes) -> Any:
    p = tmp_path / "rec.jsonl"
    p.write_bytes(raw)
    return p


RECORDED_CASES = [
    ("missing-file", lambda tmp: tmp / "none.jsonl", FileNotFoundError),
    ("not-utf8", lambda tmp: _recordings(tmp, b'{"question": "q", "output": "\xff"}\n'), UnicodeDecodeError),
    ("not-json", lambda tmp: _recordings(tmp, b'{"question": "q", "output": \n'), json.JSONDecodeError),
]


@pytest.mark.parametrize("name,make,cause", RECORDED_CASES, ids=[c[0] for c in RECORDED_CASES])
def test_the_recorded_backend_translates_every_failure_of_its_file(tmp_path: Any, name: str, make: Any,
                                                                   cause: type) -> None:
    from tandem.backends.recorded import RecordingSet

    with pytest.raises(InputError) as exc:
        RecordingSet(make(tmp_path))
    assert isinstance(exc.value.__cause__, cause)


def test_an_unreadable_recordings_file_is_an_input_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from tandem.backends.recorded import RecordingSet

    failure = OSError(5, "Input/output error")
    monkeypatch.setattr(Path, "read_bytes", _fail_with(failure))
    with pytest.raises(InputError, match="Input/output error") as exc:
        RecordingSet(_recordings(tmp_path, b""))
    assert exc.value.__cause__ is failure


@pytest.mark.real
def test_the_gguf_tokenizer_of_recordings_translates_its_failures(smol_path: Any, tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tandem.backends.recorded import RecordedBackend, RecordedConfig
    from tandem.backends.tokenizers import GGUFTokenizer

    tok = GGUFTokenizer(smol_path)
    path = _recordings(tmp_path, b'{"question": "q", "output": "a \\ud800 b", "params_total": 10}\n')
    b = RecordedBackend(RecordedConfig(path=str(path), tokenizer=str(smol_path)), tok)
    with pytest.raises(InputError, match="cannot be encoded as UTF-8") as exc:
        list(b.stream(GenerationRequest(Prompt((Message("user", "q"),)))))
    assert isinstance(exc.value.__cause__, UnicodeEncodeError)
    failure = RuntimeError("engine")
    monkeypatch.setattr(tok._llama, "tokenize", _fail_with(failure))
    with pytest.raises(BackendError, match="llama.cpp failed") as exc2:
        tok.encode("hello")
    assert exc2.value.__cause__ is failure
    bad = _recordings(tmp_path, b"GGUF")
    with pytest.raises(ModelError) as exc3:
        GGUFTokenizer(bad)
    assert exc3.value.__cause__ is not None
