#!/usr/bin/env bash
# Probe tables for the fixed splits, embedded pair, greedy, in the frozen default hand-over mode
# (docs/RESULTS.md, "Hand-over choice"). Each split is cut into two shards; two workers take the
# shards of all the splits asked for in order, one llama.cpp thread each (on two cores ~18% more
# throughput than one process with two threads), so a core never waits for another split's shard.
# A shard is its own run directory; `tandem train fit` / `tandem replay` / `tandem report` take several.
# Resumable: run again to continue where it stopped; each finished shard is packed for committing.
#   scripts/probes.sh SPLIT [SPLIT ...]     SPLIT: train | calib | gsm8k-test | humaneval | math500
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
[[ $# -gt 0 ]] || { echo "usage: scripts/probes.sh SPLIT [SPLIT ...]  (train | calib | gsm8k-test | humaneval | math500)" >&2; exit 2; }
MODE="${MODE:-continue}"  # the frozen default: see docs/RESULTS.md before changing it
BUDGETS="32,64,128,192,256"
CONFIG="$(mktemp --suffix=.toml)"
trap 'rm -f "$CONFIG"' EXIT
printf '[llm]\nmodel = "qwen2.5-coder-1.5b"\nn_threads = 1\n[slm]\nmodel = "qwen2.5-coder-0.5b"\nn_threads = 1\n' > "$CONFIG"

shard() {  # bench split lo hi dir
  local out="$5/$1-$2-$3-$(($4 - 1))-$MODE"
  mkdir -p "$5"
  echo "==> $1 $2 rows $3-$(($4 - 1)) ($MODE) into $out"
  .venv/bin/tandem probe "$1" --split "$2" --offset "$3" --limit "$(($4 - $3))" --handover "$MODE" \
    --budgets "$BUDGETS" -c "$CONFIG" --out "$out" > "$out.log" 2>&1 || { echo "failed: see $out.log" >&2; return 1; }
  .venv/bin/python -c "from tandem.bench.store import pack; pack('$out')"
  rm -f "$out.log"
  echo "done: $out"
}

SHARDS=()
two_shards() {  # bench split lo hi dir
  local mid=$(( ($3 + $4) / 2 ))
  SHARDS+=("$1 $2 $3 $mid $5" "$1 $2 $mid $4 $5")
}

for split in "$@"; do
  case "$split" in
    train) two_shards gsm8k train 100 400 results/train ;;
    calib) two_shards gsm8k train 400 550 results/calib ;;
    gsm8k-test) two_shards gsm8k test 0 300 results/test ;;
    humaneval) two_shards humaneval test 0 164 results/test ;;
    math500) two_shards math500 test 0 100 results/test ;;
    *) echo "unknown split: $split (train | calib | gsm8k-test | humaneval | math500)" >&2; exit 2 ;;
  esac
done

export MODE BUDGETS CONFIG
export -f shard
# two workers; each takes the next shard as soon as it is free
printf '%s\0' "${SHARDS[@]}" | xargs -0 -P 2 -n 1 bash -c 'set -euo pipefail; shard $1' _
