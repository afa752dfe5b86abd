#!/usr/bin/env bash
# The measurement queue, in order; every step resumes where it stopped.
set -uo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
T=.venv/bin/tandem
probe() {  # mode out [extra args]
  local mode=$1 out=$2; shift 2
  $T probe gsm8k --split train --handover "$mode" --budgets 32,64,128,192,256 --out "$out" "$@" &&
    .venv/bin/python -c "from tandem.bench.store import pack; pack('$out')"
}
probe continue results/dev/gsm8k-train-0-99-continue --offset 0 --limit 100
$T eval gsm8k --split train --offset 0 --limit 20 --methods slm,llm,tandem --classifier budget \
  --out results/smoke/gsm8k-train-0-19-live && .venv/bin/python -c "from tandem.bench.store import pack; pack('results/smoke/gsm8k-train-0-19-live')"
.venv/bin/python benchmarks/overhead.py --limit 10 > results/smoke/overhead.json 2> results/smoke/overhead.log
probe hint results/dev/gsm8k-train-0-99-hint --offset 0 --limit 100
