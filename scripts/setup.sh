#!/usr/bin/env bash
# Idempotent set-up: a virtual environment at .venv, the package with the given extras, and the
# given embedded models. A second run with the same inputs does nothing costly (no rebuild of
# llama-cpp-python: pip reuses its built wheel; no re-download: models are verified by sha256).
#   scripts/setup.sh EXTRAS [MODEL ...]     e.g.  scripts/setup.sh llamacpp,dev smollm2-135m
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-llamacpp}"
shift || true
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi

STAMP=".venv/.tandem-installed-$(echo "$EXTRAS" | tr ',' '_')"
WANT="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "==> installing tandem[$EXTRAS] (the first time this compiles llama.cpp: ~5 minutes)"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi

if [ "$#" -gt 0 ]; then
  .venv/bin/tandem models pull "$@"
fi
