"""Shared fixtures. Real-model tests use SmolLM2-135M through llama.cpp; they skip when the model or
llama-cpp-python is missing, unless TANDEM_REQUIRE_REAL=1 (CI), where they fail instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _require_real() -> bool:
    return os.environ.get("TANDEM_REQUIRE_REAL") == "1"


def need(condition: bool, why: str) -> None:
    if condition:
        return
    if _require_real():
        pytest.fail(f"required for this test: {why}")
    pytest.skip(why)


def installed_model(name: str) -> Path:
    """The GGUF file of an installed registered model (skip, or fail when real models are required)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        need(False, "llama-cpp-python is not installed")
    from tandem.errors import ModelError
    from tandem.models import resolve_model

    try:
        return resolve_model(name)
    except ModelError as exc:
        need(False, str(exc))
        raise


@pytest.fixture(scope="session")
def smol_path() -> Path:
    return installed_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol(smol_path: Path):
    """One shared SmolLM2 backend (loading takes ~0.2 s; tests that need a fresh cache make their own)."""
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    b = LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=2048, n_threads=2))
    yield b
    b.close()


@pytest.fixture
def fresh_smol(smol_path: Path):
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    def make():
        return LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=2048, n_threads=2))

    made = []

    def factory():
        b = make()
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("TANDEM_DATA_DIR", REPO.parent / "shared" / "data"))
    need(d.is_dir(), f"benchmark data directory not found: {d}")
    return d


@pytest.fixture(scope="session")
def qwen_tokenizer_path() -> Path:
    """The embedded Qwen 0.5B GGUF, for its tokenizer alone (the recordings' token counts)."""
    return installed_model("qwen2.5-coder-0.5b")
