"""Backends, built by short name; heavy engines are imported only when chosen."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import BackendSettings
    from ..types import Backend

BACKEND_KINDS = ("llamacpp", "openai", "scripted", "recorded")


def build_backend(settings: BackendSettings, *, models_dir: str | None = None) -> Backend:
    """Create the backend a `BackendSettings` describes (loads the model for `llamacpp`)."""
    from .sampling import Sampling

    if settings.kind == "llamacpp":
        if settings.max_in_flight not in (None, 1):
            raise ConfigError(f"max_in_flight {settings.max_in_flight}: an embedded llama.cpp model takes one call "
                              "at a time (serve it behind an engine that batches, e.g. vLLM, for more)")
        from ..models import resolve_model, spec_for_path
        from .llamacpp import LlamaCppBackend, LlamaCppConfig

        path = resolve_model(settings.model, models_dir)
        spec = spec_for_path(path, models_dir)
        return LlamaCppBackend(
            LlamaCppConfig(
                model_path=str(path), name=spec.name if spec else path.stem, n_ctx=settings.n_ctx,
                n_threads=settings.n_threads, checksum=spec.sha256 if spec else "",
                n_params=settings.n_params or (spec.n_params if spec else 0),
                sampling=Sampling.from_settings(settings), chat_template=settings.chat_template or "",
            )
        )
    if settings.kind == "openai":
        from .openai_http import OpenAIBackend, OpenAIBackendConfig

        if settings.api_key_env and settings.api_key_env not in os.environ:
            raise ConfigError(f"environment variable {settings.api_key_env} (API key) is not set")
        config = OpenAIBackendConfig.from_settings(settings)
        tokenizer = None
        if settings.count_tokenizer:  # counts streams that report neither usage nor log-probs
            from .tokenizers import load_tokenizer

            tokenizer = load_tokenizer(settings.count_tokenizer, models_dir)
        return OpenAIBackend(config, tokenizer=tokenizer)
    if settings.kind == "scripted":
        from .scripted import ScriptedBackend

        return ScriptedBackend(settings.reply or "The answer is \\boxed{0}.", name=settings.model,
                               n_params=settings.n_params or 1_000_000, token_delay_s=settings.token_delay_s,
                               max_in_flight=settings.max_in_flight or 1)
    if settings.kind == "recorded":
        from .recorded import RecordedBackend, RecordedConfig
        from .tokenizers import load_tokenizer

        return RecordedBackend(
            RecordedConfig(path=settings.model, tokenizer=settings.tokenizer, name=settings.name or "",
                           n_params=settings.n_params or 0, n_ctx=settings.n_ctx,
                           prompt_rule=settings.prompt_rule or "", tokens_per_second=settings.tokens_per_second,
                           cap_tokens=settings.cap_tokens),
            load_tokenizer(settings.tokenizer, models_dir),
        )
    raise ConfigError(f"unknown backend kind {settings.kind!r}: use one of {BACKEND_KINDS}")
