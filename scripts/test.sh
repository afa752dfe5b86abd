#!/usr/bin/env bash
# Set up everything the tests need (package with all extras, SmolLM2-135M for real-model tests, the
# Qwen 0.5B GGUF for its tokenizer: the recorded outputs are counted with it)
# and run lint, type check and the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh llamacpp,server,eval,train,dev smollm2-135m qwen2.5-coder-0.5b
echo "==> models verify --full"  # hash the test model again: trust no checksum recorded in the cache
.venv/bin/tandem models verify --full smollm2-135m qwen2.5-coder-0.5b
export TANDEM_REQUIRE_REAL="${TANDEM_REQUIRE_REAL:-1}"
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
echo "==> ruff"
.venv/bin/ruff check src tests
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest -q "$@"
