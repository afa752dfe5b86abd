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
FIND_LINKS=()
if [[ ",$EXTRAS," == *",llamacpp,"* || ",$EXTRAS," == *",server,"* ]]; then
  # llama.cpp is compiled for this CPU once (the first time: ~5 minutes) and kept by CPU features
  LLAMA_VERSION="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1 | cut -d= -f3)"
  WHEELS="$(bash scripts/llama_build.sh "$LLAMA_VERSION" .venv/bin/python)"
  FIND_LINKS=(--find-links "$WHEELS")
fi
WANT="$( (cat pyproject.toml; echo "${FIND_LINKS[*]}") | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "==> installing tandem[$EXTRAS]"
  if [ "${#FIND_LINKS[@]}" -gt 0 ]; then  # replace any llama-cpp-python built elsewhere
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
      --no-index "${FIND_LINKS[@]}" "llama-cpp-python==$LLAMA_VERSION"
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${FIND_LINKS[@]}" -e ".[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi

if [ "$#" -gt 0 ]; then
  .venv/bin/tandem models pull "$@"
fi
