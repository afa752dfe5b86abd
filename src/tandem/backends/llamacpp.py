"""Embedded GGUF models through llama-cpp-python: one loaded model per file, KV cache reused
across calls that share a prefix, exact per-token log-probs and entropies, and scoring.

llama-cpp-python's exceptions become the project's in one place, `engine_errors`; chat templates
are rendered by `tandem.backends.chat_template`, which translates jinja2's.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from ..config import DEFAULT_N_CTX, DEFAULT_N_THREADS
from ..errors import BackendError, ConfigError, InputError, ModelError
from ..types import (
    BackendBase,
    Capabilities,
    GenerationRequest,
    ModelInfo,
    Prompt,
    ScoreResult,
    TokenStep,
    TokenStream,
    Usage,
)
from .chat_template import render_chat, template_id
from .sampling import Sampling

LLAMA_CPP_VERSION = "0.3.36"


@dataclass(frozen=True)
class LlamaCppConfig:
    model_path: str
    name: str = ""
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int = DEFAULT_N_THREADS  # 0: all cores
    n_batch: int = 512
    seed: int = 0
    checksum: str = ""  # sha256 of the file; "" (a file given by path): hashed at load, once per change
    n_params: int = 0  # 0: read from the GGUF (parameters that cost FLOPs per token)
    sampling: Sampling = field(default_factory=Sampling)  # the role's values (no extra_body: that is HTTP)
    chat_template: str = ""  # replaces the GGUF's own (jinja2, as in the GGUF metadata)

    def __post_init__(self) -> None:
        if self.sampling.extra_body:
            raise ConfigError("extra_body goes into HTTP requests: an embedded llama.cpp model has none")


class engine_errors:  # a `with` block, lowercase like contextlib.suppress
    """The boundary of the embedded backend: what llama-cpp-python raises in the block becomes a
    project error, raised from it. The library missing -> BackendError; text UTF-8 cannot encode
    (lone surrogates, which JSON allows) -> InputError; the engine's ValueError or RuntimeError ->
    ModelError while loading the file (`doing="load"`), else BackendError. Project errors (a
    ContextOverflow, a template's errors) and StopIteration pass through."""

    def __init__(self, doing: str, model: str) -> None:
        self.doing, self.model = doing, model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # None: nothing is suppressed
        if isinstance(exc, ImportError):
            raise BackendError("llama-cpp-python is not installed: pip install 'tandem[llamacpp]'") from exc
        if isinstance(exc, UnicodeEncodeError):
            raise InputError(f"the text cannot be encoded as UTF-8: {exc.reason} at position {exc.start}") from exc
        if isinstance(exc, ValueError | RuntimeError):
            if self.doing == "load":
                raise ModelError(f"cannot load {self.model}: {exc}") from exc
            raise BackendError(f"llama.cpp failed to {self.doing} with {self.model}: {exc}") from exc


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class LlamaCppBackend(BackendBase):
    """A GGUF model loaded in this process. Not thread-safe: one call at a time (a lock enforces it)."""

    max_in_flight: int | None = 1

    def __init__(self, config: LlamaCppConfig) -> None:
        path = Path(config.model_path).expanduser()
        with engine_errors("load", str(path)):
            import llama_cpp
        from ._llama_adapter import LlamaAdapter

        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        if llama_cpp.__version__ != LLAMA_CPP_VERSION:
            raise BackendError(
                f"llama-cpp-python {llama_cpp.__version__} found, tandem needs =={LLAMA_CPP_VERSION}"
            )
        if not config.checksum:  # a GGUF given by path: the manifest must still name these exact weights
            from ..models import local_sha256

            config = replace(config, checksum=local_sha256(path))
        with engine_errors("load", str(path)):
            llama = llama_cpp.Llama(
                model_path=str(path), n_ctx=config.n_ctx, n_threads=config.n_threads or os.cpu_count(),
                n_threads_batch=config.n_threads or os.cpu_count(),
                n_batch=config.n_batch, seed=config.seed, logits_all=False, verbose=False,
            )
        self.config = config
        self._name = config.name or path.stem
        self._llama = llama
        self._adapter = LlamaAdapter(llama)
        self._lock = threading.Lock()
        meta: dict[str, Any] = dict(llama.metadata)
        self._template = config.chat_template or meta.get("tokenizer.chat_template", "")
        self._bos = self._piece(llama.token_bos())
        self._eos = self._piece(llama.token_eos())
        self._info = ModelInfo(
            name=self._name,
            n_params=config.n_params or self._matmul_params(),
            n_ctx=self._adapter.n_ctx,
            tokenizer_id=self._tokenizer_id(meta),
            chat_template_id=template_id(self.render) if self._template else "",
            capabilities=Capabilities(stream_logprobs=True, entropy="exact", score=True, raw_prompt=True),
            checksum=config.checksum,
            sampling=config.sampling.to_dict(),
            thinks=self._opens_thought(),
        )

    def _opens_thought(self) -> bool:
        """Whether the chat template opens a thought in the prompt (a reasoning model's: `<think>` right
        where the assistant's turn starts)."""
        if not self._template:
            return False
        from ..types import Message

        opened = self.render(Prompt(messages=(Message("user", "Q"),))).rstrip()
        return opened.endswith("<think>")

    def _matmul_params(self) -> int:
        """All weights as llama.cpp counts them. For a model with an untied output head this counts the
        input embedding table too (a lookup, no FLOPs): registered models pass their exact count."""
        return int(self._llama._model.n_params())

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama.detokenize([token], special=True)).decode("utf-8", errors="replace")

    def _tokenizer_id(self, meta: dict[str, Any]) -> str:
        ll = self._llama
        n = ll.n_vocab()
        pieces = "".join(
            self._piece(i) for i in range(0, n, max(1, n // 2000))
        )
        head = f"{meta.get('tokenizer.ggml.model', '')}|{meta.get('tokenizer.ggml.pre', '')}|{n}|"
        return _sha(head + pieces)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def adapter(self) -> Any:
        return self._adapter

    def render(self, prompt: Prompt) -> str:
        """The GGUF's chat template applied (`tandem.backends.chat_template`), then `assistant_prefix`."""
        if not self._template:
            raise BackendError(f"{self._name} has no chat template in its GGUF metadata")
        text = render_chat(self._template, prompt.messages, owner=self._name, bos_token=self._bos,
                           eos_token=self._eos)
        return text + prompt.assistant_prefix

    def score(self, text: str) -> ScoreResult:
        import time

        with self._lock:
            t0 = time.perf_counter()
            with engine_errors("score a text", self._name):
                tokens, lps, ents, computed = self._adapter.score(text)
            secs = time.perf_counter() - t0
            steps, offsets, pos = [], [], 0
            for i, tok in enumerate(tokens):
                piece = bytes(self._llama.detokenize([tok], special=True)).decode("utf-8", errors="replace")
                lp, ent = float(lps[i]), float(ents[i])
                steps.append(TokenStep(piece, None if math.isnan(lp) else lp, None if math.isnan(ent) else ent, tok))
                offsets.append(pos)
                pos += len(piece)
        usage = Usage(len(tokens), computed, len(tokens) - computed, 0, secs)
        return ScoreResult(steps=steps, offsets=offsets, usage=usage)

    def stream(self, request: GenerationRequest) -> TokenStream:
        """A prompt that does not fit the context is refused here, before the stream starts."""
        text = self.render(request.prompt)
        with engine_errors("tokenize the prompt", self._name):
            tokens = self._adapter.tokenize(text)  # reads the vocabulary only: no lock, no cache change
        self._adapter.fit(len(tokens), "the prompt", generating=True)
        usage = Usage()
        return TokenStream(self._generate(tokens, request, usage), usage)

    def _generate(self, tokens: list[int], req: GenerationRequest, usage: Usage) -> Generator[TokenStep, None, str]:
        s = self.config.sampling.resolve(req)
        with self._lock:
            gen = self._adapter.generate(
                tokens, usage, max_tokens=req.max_tokens, temperature=s.temperature or 0.0, seed=s.seed or 0,
                stop=s.stop, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, repeat_penalty=s.repetition_penalty,
                presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
            )
            try:
                tok = None
                while True:
                    try:
                        with engine_errors("generate", self._name):
                            tok = next(gen)
                    except StopIteration as done:
                        return str(done.value)
                    yield TokenStep(tok.text, tok.logprob, tok.entropy, tok.token_id)
            finally:
                gen.close()

    def tokenize(self, text: str) -> list[int]:
        with engine_errors("tokenize a text", self._name):
            return self._adapter.tokenize(text)

    def reset_cache(self) -> None:
        """Forget the KV cache (cold start for fair measurements)."""
        with self._lock:
            self._llama.reset()
            self._adapter.forget()

    def close(self) -> None:
        with self._lock:
            self._llama.close()
