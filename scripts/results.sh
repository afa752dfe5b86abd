#!/usr/bin/env bash
# The measurements in docs/RESULTS.md that come from the fixed splits, one step at a time.
# Probe tables first (scripts/probes.sh); each step below reads only committed tables or runs.
#   scripts/results.sh baselines   replay slm, llm, fixed:N, oracle on the test tables
#   scripts/results.sh live         live slm, llm, fixed:128 on GSM8K test 0-49 + agreement (machine idle!)
#   scripts/results.sh classifier   fit on train, calibrate on calib, replay every method on GSM8K + HumanEval
#   KIND=… scripts/results.sh ship  ship the chosen kind as the embedded pair's default classifier
#   scripts/results.sh live-tandem  live tandem low + medium and llm on GSM8K test 0-49 + agreement (machine idle!)
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
T=.venv/bin/tandem
GSM8K_TEST=(results/test/gsm8k-test-0-149-continue results/test/gsm8k-test-150-299-continue)
HUMANEVAL=(results/test/humaneval-test-0-81-continue results/test/humaneval-test-82-163-continue)
MATH500=(results/test/math500-test-0-49-continue results/test/math500-test-50-99-continue)
TRAIN=(results/train/gsm8k-train-100-249-continue results/train/gsm8k-train-250-399-continue)
CALIB=(results/calib/gsm8k-train-400-474-continue results/calib/gsm8k-train-475-549-continue)
CLF=src/tandem/data/classifiers/qwen2.5-coder-1.5b+0.5b.json
present() { for d in "$@"; do [[ -f "$d/manifest.json" ]] || return 1; done; }
BENCHES=(gsm8k humaneval math500)
# test_tables BENCH: its shards in DIRS and report titles in NAME (baselines) and CLF_TITLE (with a
# classifier); fails for an optional benchmark whose tables are not there (GSM8K test is required:
# a missing table is then tandem's error to report)
test_tables() {
  case "$1" in
    gsm8k) DIRS=("${GSM8K_TEST[@]}"); NAME="GSM8K test 0-299"; CLF_TITLE="GSM8K test 0-299: every method"
      return 0 ;;
    humaneval) DIRS=("${HUMANEVAL[@]}"); NAME="HumanEval 164"; CLF_TITLE="HumanEval 164, math-trained" ;;
    math500) DIRS=("${MATH500[@]}"); NAME="MATH-500 0-99"; CLF_TITLE="MATH-500 0-99" ;;
  esac
  present "${DIRS[@]}"
}

for step in "$@"; do
  case "$step" in
    baselines)
      for bench in "${BENCHES[@]}"; do
        test_tables "$bench" || continue
        $T replay "${DIRS[@]}" --out "results/test/report-$bench" --title "$NAME: baselines"
      done
      ;;
    live)
      $T eval gsm8k --split test --limit 50 --methods slm,llm,fixed:128 --classifier budget \
        --out results/test/gsm8k-test-0-49-live
      $T agree results/test/gsm8k-test-0-49-live "${GSM8K_TEST[0]}" --out results/test/agree-baselines
      $T report results/test/gsm8k-test-0-49-live --out results/test/report-gsm8k-0-49-live
      ;;
    classifier)
      mkdir -p results/classifier
      $T train fit "${TRAIN[@]}" --kind logistic --out results/classifier/logistic.json
      $T train fit "${TRAIN[@]}" --kind gbdt --out results/classifier/gbdt.json
      # without the SLM's shadow passes (what a plain OpenAI backend allows): fewer features, no scoring cost
      $T train fit "${TRAIN[@]}" --kind logistic --feature-groups llm_stream,progress \
        --out results/classifier/logistic-llm-only.json
      for kind in logistic gbdt logistic-llm-only; do
        # the default objectives (lambda 0.5 / 0.2 / 0.05) ...
        $T train calibrate "results/classifier/$kind.json" "${CALIB[@]}" --out "results/classifier/$kind.json"
        # ... and fixed FLOPs budgets (0.5 / 0.8 / 1.0 x the LLM alone; route and cascade at 0.8),
        # which compare tandem, route, cascade and fixed:N at matched cost
        $T train calibrate "results/classifier/$kind.json" "${CALIB[@]}" --objective budget \
          --flops-budget 0.5,0.8,1.0 --out "results/classifier/$kind-budget.json"
      done
      for kind in logistic gbdt logistic-llm-only; do
        for bench in "${BENCHES[@]}"; do
          test_tables "$bench" || continue
          # discrimination held out: in domain (GSM8K test) and zero-shot (HumanEval: code)
          $T train score "results/classifier/$kind.json" "${DIRS[@]}" \
            --out "results/classifier/score-$kind-$bench.json" --plot "results/classifier/score-$kind-$bench.png"
          for cal in "" -budget; do
            $T replay "${DIRS[@]}" --classifier "results/classifier/$kind$cal.json" \
              --out "results/test/report-$bench-$kind$cal" --title "$CLF_TITLE ($kind$cal)"
          done
        done
      done
      ;;
    ship)  # KIND=logistic|gbdt|logistic-llm-only: the chosen kind (docs/RESULTS.md), shipped as the default
      kind="${KIND:?set KIND to the classifier kind chosen in docs/RESULTS.md}"
      cp "results/classifier/$kind.json" "$CLF"
      # low = the best accuracy within half the LLM alone's FLOPs, so that one effort always trades
      # accuracy for cost; medium and high keep the default objectives (lambda 0.2 / 0.05)
      $T train calibrate "$CLF" "${CALIB[@]}" --effort low --objective budget --flops-budget 0.5 \
        --no-route --no-cascade --out "$CLF" --plot "results/classifier/shipped.tradeoff.png"
      for bench in "${BENCHES[@]}"; do
        test_tables "$bench" || continue
        $T replay "${DIRS[@]}" --classifier "$CLF" --out "results/test/report-$bench-shipped" \
          --title "$bench: every method (shipped classifier, $kind)"
      done
      ;;
    live-tandem)
      [[ -f "$CLF" ]] || { echo "no shipped classifier at $CLF: run the classifier and ship steps" >&2; exit 2; }
      $T eval gsm8k --split test --limit 50 --methods tandem:low,tandem:medium --classifier "$CLF" \
        --out results/test/gsm8k-test-0-49-live-tandem
      $T agree results/test/gsm8k-test-0-49-live-tandem "${GSM8K_TEST[0]}" --classifier "$CLF" \
        --out results/test/agree-tandem
      # the LLM alone again, right after, so that wall times compare under the same conditions
      $T eval gsm8k --split test --limit 50 --methods llm --out results/test/gsm8k-test-0-49-live-llm
      $T report results/test/gsm8k-test-0-49-live-tandem results/test/gsm8k-test-0-49-live-llm \
        --out results/test/report-gsm8k-0-49-live-tandem --title "GSM8K test 0-49, live: tandem with the shipped classifier"
      ;;
    *) echo "unknown step: $step (baselines | live | classifier | ship | live-tandem)" >&2; exit 2 ;;
  esac
done
