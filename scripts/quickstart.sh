#!/usr/bin/env bash
# Set up the embedded default (llama.cpp + Qwen2.5-Coder 1.5B as LLM, 0.5B as SLM) and solve an
# example problem in tandem, with the LLM alone for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh llamacpp qwen2.5-coder-1.5b qwen2.5-coder-0.5b
exec .venv/bin/tandem solve --compare \
  "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
