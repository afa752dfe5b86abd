#!/usr/bin/env bash
# Set up the embedded default (llama.cpp + Qwen2.5-Coder 1.5B as LLM, 0.5B as SLM) and solve an
# example problem with a visible hand-over (the LLM writes 64 tokens, is stopped, and the SLM
# continues; what each wrote and what each cost), with the LLM alone for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh llamacpp qwen2.5-coder-1.5b qwen2.5-coder-0.5b
cat <<'NOTE'
This example hands over after 64 LLM tokens (--mode fixed:64) to show the mechanism. On this small
embedded pair that costs accuracy: on GSM8K test, fixed:64 is right on 34.0% of problems at 0.72x
the LLM alone's FLOPs, against 61.0% for the LLM alone; the shipped classifier's low effort, 29.7%
at 0.51x; medium and high effort run as the LLM alone (docs/RESULTS.md). Tandem's savings are for
reasoning LLMs that think for thousands of tokens: docs/reasoning.md.
NOTE
exec .venv/bin/tandem solve --compare --mode fixed:64 \
  "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
