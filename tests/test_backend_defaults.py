"""Backend defaults are defined once, in `tandem.config`: the settings file's `BackendSettings` and the
backends' own config classes agree on every option they share, and the values are the documented ones."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

import pytest

from tandem import config
from tandem.backends.llamacpp import LlamaCppConfig
from tandem.backends.openai_http import OpenAIBackendConfig
from tandem.backends.recorded import RecordedConfig
from tandem.config import BackendSettings


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


@pytest.mark.parametrize("cls,shared", [
    (OpenAIBackendConfig, {"n_ctx", "timeout_s", "idle_timeout_s", "min_tokens_per_s", "max_retries", "top_logprobs",
                           "api", "tokenizer_id", "chat_template_id"}),
    (LlamaCppConfig, {"n_ctx", "n_threads"}),
    (RecordedConfig, {"tokenizer"}),
])
def test_backend_configs_share_the_settings_defaults(cls: type, shared: set[str]) -> None:
    ours = _dataclass_defaults(cls)
    settings = {name: f.default for name, f in BackendSettings.model_fields.items()}
    assert shared <= set(ours)
    assert {k: ours[k] for k in shared} == {k: settings[k] for k in shared}


def test_the_default_values_are_unchanged() -> None:
    assert (config.DEFAULT_N_CTX, config.DEFAULT_N_THREADS, config.DEFAULT_TIMEOUT_S, config.DEFAULT_CONNECT_TIMEOUT_S,
            config.DEFAULT_MIN_TOKENS_PER_S, config.DEFAULT_MAX_RETRIES, config.DEFAULT_RETRY_BACKOFF_S,
            config.DEFAULT_TOP_LOGPROBS, config.DEFAULT_TOKENIZER) == (
        4096, 0, 120.0, 10.0, 1.0, 2, 0.5, 5, "qwen2.5-coder-0.5b")
    openai = _dataclass_defaults(OpenAIBackendConfig)
    assert (openai["connect_timeout_s"], openai["retry_backoff_s"]) == (10.0, 0.5)
    assert RecordedConfig("x").n_ctx == 32768  # a recording's own context default, not the engines'
