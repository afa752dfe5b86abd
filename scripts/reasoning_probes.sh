#!/usr/bin/env bash
# Probe tables of the reasoning regime: a reasoning LLM's recorded outputs (../shared/data/traces)
# as its stream, the SLM live through llama.cpp (docs/reasoning.md, docs/RESULTS.md). Two workers
# (one llama.cpp thread each) take the jobs in order; each job is its own run directory, resumable
# (run again to continue), packed for committing when it finishes.
#   scripts/reasoning_probes.sh JOB [JOB ...]
# JOBs: dev-continue-1.5b dev-continue-0.5b dev-conclude dev-hint  (the dev slice: GSM8K test rows
#       0 to DEV_HI-1: the first 20 QwQ-32B recordings by default), train, train-more, calib,
#       calib-more, qwq-test, r1-math500, r1-32b-test.
# SLM=qwen2.5-coder-1.5b|qwen2.5-coder-0.5b and MODE=continue|conclude|hint choose the frozen pair and
# hand-over for the non-dev jobs. Each table is marked with its purpose (dev, train, calibration, test).
# WORKERS=N runs N jobs at once (default 2, one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
TRACES="$TANDEM_DATA_DIR/traces"
[[ $# -gt 0 ]] || { sed -n '2,11p' "$0" >&2; exit 2; }
SLM="${SLM:-qwen2.5-coder-1.5b}"
MODE="${MODE:-continue}"
BUDGETS="256,512,1024,1536"
OUT="${OUT:-results/reasoning}"
DEV_HI="${DEV_HI:-32}"  # dev slice: GSM8K test rows 0..DEV_HI-1 (32: ids 14-36, the first 20 recordings)

job() {  # name recording bench lo hi slm mode purpose
  local name=$1 rec=$2 bench=$3 lo=$4 hi=$5 slm=$6 mode=$7 purpose=$8
  local dir="$OUT/$name"
  local config
  config="$(mktemp --suffix=.toml)"
  # the recordings were cut at 2,000 tokens of their own tokenizer: 1,994 or more of ours (no uncut one has
  # more than 1,984), so a recording of 1,990 or more ended at that limit, even after its thought closed
  printf '[llm]\ncap_tokens = 1990\n[slm]\nmodel = "%s"\nn_threads = 1\nn_ctx = 4096\n' "$slm" > "$config"
  mkdir -p "$OUT"
  echo "==> $name: $bench rows $lo-$((hi - 1)), $(basename "$rec"), SLM $slm, $mode"
  if .venv/bin/tandem probe "$bench" --split test --offset "$lo" --limit "$((hi - lo))" --handover "$mode" \
      --budgets "$BUDGETS" --llm-max-tokens 4096 --slm-max-tokens 512 --trial-tokens 16 --stop-at-answer \
      --llm-recording "$TRACES/$rec" --purpose "$purpose" -c "$config" --out "$dir" > "$dir.log" 2>&1; then
    .venv/bin/python -c "from tandem.bench.store import pack; pack('$dir')"
    rm -f "$dir.log" "$config"
    echo "done: $dir"
  else
    rm -f "$config"
    echo "failed: see $dir.log" >&2
    return 1
  fi
}

QWQ=qwq-32b_gsm8k-test.jsonl
R14=r1-distill-qwen-14b_math500.jsonl
R32=r1-distill-qwen-32b_gsm8k-test.jsonl
JOBS=()
for j in "$@"; do
  case "$j" in
    dev-continue-1.5b) JOBS+=("dev-continue-1.5b $QWQ gsm8k 0 $DEV_HI qwen2.5-coder-1.5b continue dev") ;;
    dev-continue-0.5b) JOBS+=("dev-continue-0.5b $QWQ gsm8k 0 $DEV_HI qwen2.5-coder-0.5b continue dev") ;;
    dev-conclude) JOBS+=("dev-conclude-${SLM#qwen2.5-coder-} $QWQ gsm8k 0 $DEV_HI $SLM conclude dev") ;;
    dev-hint) JOBS+=("dev-hint-${SLM#qwen2.5-coder-} $QWQ gsm8k 0 $DEV_HI $SLM hint dev") ;;
    # splits by problem id; shards are named by benchmark rows, which are not ids (GSM8K test rows 32,
    # 146 and 223 hold ids 37, 200 and 300): train ids 37-199, calibration 200-299, tests 300 and above
    train) JOBS+=("qwq-gsm8k-test-32-88-$MODE $QWQ gsm8k 32 89 $SLM $MODE train") ;;  # ids 37-117 (57 rows)
    train-more) JOBS+=("qwq-gsm8k-test-89-145-$MODE $QWQ gsm8k 89 146 $SLM $MODE train") ;;  # ids 118-199
    # ids 118-199 as more calibration problems (a point chosen on 60 finished problems cannot resolve a
    # 2-point gap; the classifier stays fitted on the train table)
    calib-more) JOBS+=("qwq-gsm8k-test-89-145-$MODE $QWQ gsm8k 89 146 $SLM $MODE calibration") ;;
    calib) JOBS+=("qwq-gsm8k-test-146-184-$MODE $QWQ gsm8k 146 185 $SLM $MODE calibration" "qwq-gsm8k-test-185-222-$MODE $QWQ gsm8k 185 223 $SLM $MODE calibration") ;;
    qwq-test) JOBS+=("qwq-gsm8k-test-223-296-$MODE $QWQ gsm8k 223 297 $SLM $MODE test" "qwq-gsm8k-test-297-374-$MODE $QWQ gsm8k 297 375 $SLM $MODE test") ;;
    r1-math500) JOBS+=("r1-14b-math500-test-168-333-$MODE $R14 math500 168 334 $SLM $MODE test" "r1-14b-math500-test-334-499-$MODE $R14 math500 334 500 $SLM $MODE test") ;;
    r1-32b-test) JOBS+=("r1-32b-gsm8k-test-223-296-$MODE $R32 gsm8k 223 297 $SLM $MODE test" "r1-32b-gsm8k-test-297-374-$MODE $R32 gsm8k 297 375 $SLM $MODE test") ;;
    *) echo "unknown job: $j" >&2; exit 2 ;;
  esac
done

export OUT BUDGETS TRACES
export -f job
printf '%s\0' "${JOBS[@]}" | xargs -0 -P "${WORKERS:-2}" -n 1 bash -c 'set -euo pipefail; job $1' _
