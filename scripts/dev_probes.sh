#!/usr/bin/env bash
# Dev-split probe tables (GSM8K train rows 0-99) for both hand-over modes, embedded pair, greedy.
# Resumable: run again to continue where it stopped; each run is packed for committing.
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
for mode in ${MODES:-continue hint}; do
  out="results/dev/gsm8k-train-0-99-$mode"
  .venv/bin/tandem probe gsm8k --split train --offset 0 --limit 100 --handover "$mode" \
    --budgets 32,64,128,192,256 --out "$out"
  .venv/bin/python -c "from tandem.bench.store import pack; pack('$out')"
done
