#!/usr/bin/env bash
# The reasoning regime's measurements in docs/RESULTS.md, one step at a time, from the committed probe
# tables of scripts/reasoning_probes.sh (QwQ-32B and R1-Distill-Qwen-14B recorded, Qwen2.5-Coder-1.5B
# live, `conclude`). Every step reads committed tables only.
#   scripts/reasoning_results.sh classifier   fit on the train table (logistic and gbdt, the features a
#                                             recorded LLM allows without a scoring pass), score both on
#                                             the calibration table, calibrate both on its finished rows
#   scripts/reasoning_results.sh certify      the chosen kind (logistic, by the rule in docs/RESULTS.md)
#                                             calibrated again with the gap certified at CONFIDENCE
#                                             (default 0.8) on the same calibration rows
#   KIND=… scripts/reasoning_results.sh ship   ship OUT/KIND.json as the pair's classifier (certified-0.8 now;
#                                             logistic, the point-estimate calibration, before)
#   scripts/reasoning_results.sh test         every method on each test set: all rows and finished rows, with
#                                             the point-estimate efforts; and the certified efforts (and the
#                                             next rule's, on the sets it was fixed before)
#   scripts/reasoning_results.sh select       the next rule's certification order, by stability on the complete
#                                             rows of calibration + calib-more (docs/RESULTS.md has the rule)
#   ORDER=… scripts/reasoning_results.sh certify-next   that rule on the whole of those rows
#   scripts/reasoning_results.sh test-next    the R1-Distill-Qwen-32B GSM8K test (read first after the next rule
#                                             was fixed): every method with the shipped efforts, and the next
#                                             rule's; the next rule on the earlier test sets (after the fact)
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_DATA_DIR="${TANDEM_DATA_DIR:-$(cd .. && pwd)/shared/data}"
T=.venv/bin/tandem
R=results/reasoning
OUT=results/reasoning-classifier
TRAIN=("$R/qwq-gsm8k-test-32-88-conclude")
CALIB=("$R/qwq-gsm8k-test-146-184-conclude" "$R/qwq-gsm8k-test-185-222-conclude")
CALIB_NEXT=("$R/qwq-gsm8k-test-89-145-conclude" "${CALIB[@]}")  # + ids 118-199
QWQ_TEST=("$R/qwq-gsm8k-test-223-296-conclude" "$R/qwq-gsm8k-test-297-374-conclude")
R32_TEST=("$R/r1-32b-gsm8k-test-223-296-conclude" "$R/r1-32b-gsm8k-test-297-374-conclude")
R14_TEST=("$R/r1-14b-math500-test-168-333-conclude" "$R/r1-14b-math500-test-334-499-conclude")
CLF=src/tandem/data/classifiers/qwq-32b+qwen2.5-coder-1.5b.json
# no shadow pass: a recording has no log-probs (no llm_stream group), and with the trial answers the
# SLM's scoring features add nothing measurable on the train table (docs/RESULTS.md)
FEATURES=progress,thought,trial
# medium and high: the least-cost point within 2 points of the LLM alone on the finished calibration
# rows; low: within 5 points
GAP=0.05,0.02,0.02
CONFIDENCE="${CONFIDENCE:-0.8}"
FIRST="$OUT/logistic.json"  # the efforts calibrated by point estimates, frozen before the first test
CERTIFIED="$OUT/certified-$CONFIDENCE.json"
# the next rule: certified at 0.8 on the rows where the LLM's answer is complete, calibration + calib-more
NEXT="$OUT/certified-next.json"
# a table is complete when every problem its manifest selected has a record (a test set is replayed
# only whole: a partial table is never looked at)
present() {
  for d in "$@"; do
    [[ -f "$d/manifest.json" ]] || return 1
    .venv/bin/python -c "import sys; from tandem.bench.store import read_manifest, read_records
m = read_manifest(sys.argv[1]); done = {r['problem_id'] for r in read_records(sys.argv[1])}
sys.exit(0 if set(m['problem_ids']) <= done else 1)" "$d" || return 1
  done
}

for step in "$@"; do
  case "$step" in
    classifier)
      mkdir -p "$OUT"
      for kind in logistic gbdt; do
        $T train fit "${TRAIN[@]}" --kind "$kind" --feature-groups "$FEATURES" --split train \
          --out "$OUT/$kind.json" --plot "$OUT/reliability-$kind.png"
        $T train score "$OUT/$kind.json" "${CALIB[@]}" --out "$OUT/score-$kind-calibration.json"
        $T train calibrate "$OUT/$kind.json" "${CALIB[@]}" --objective gap --accuracy-gap "$GAP" \
          --finished-only --out "$OUT/$kind.json"
      done
      ;;
    ship)
      kind="${KIND:?set KIND to the classifier kind chosen in docs/RESULTS.md}"
      cp "$OUT/$kind.json" "$CLF"
      ;;
    certify)
      $T train calibrate "$FIRST" "${CALIB[@]}" --objective gap --accuracy-gap "$GAP" --confidence "$CONFIDENCE" \
        --finished-only --out "$CERTIFIED"
      ;;
    select)
      present "${CALIB_NEXT[@]}" || { echo "the calibration tables are not all there and complete" >&2; exit 1; }
      for order in threshold cost; do
        .venv/bin/python benchmarks/calibration_stability.py "$FIRST" "${CALIB_NEXT[@]}" --complete-only \
          --confidence "$CONFIDENCE" --certify-order "$order" --fit-share 0.8 --splits 200 \
          --json-out "$OUT/select-$order.json"
      done
      ;;
    certify-next)
      order="${ORDER:?set ORDER to the order select chose (docs/RESULTS.md)}"
      $T train calibrate "$FIRST" "${CALIB_NEXT[@]}" --objective gap --accuracy-gap "$GAP" --confidence "$CONFIDENCE" \
        --certify-order "$order" --complete-only --out "$NEXT"
      ;;
    test-next)
      [[ -f $NEXT ]] || { echo "run certify-next first" >&2; exit 1; }
      efforts=llm,tandem:low,tandem:medium,route,cascade
      if present "${R32_TEST[@]}"; then
        name="R1-Distill-Qwen-32B GSM8K test ids 300+"
        for rows in all finished complete; do
          $T replay "${R32_TEST[@]}" --classifier "$CLF" $([[ $rows != all ]] && echo "--$rows-only") \
            --out "$R/report-r32-$rows" --title "$name: every method (shipped efforts), $rows rows"
        done
      else
        echo "skipped the R1-Distill-Qwen-32B test: its tables are not all there and complete" >&2
      fi
      for set in r32 qwq r14; do
        case $set in
          r32) dirs=("${R32_TEST[@]}"); name="R1-Distill-Qwen-32B GSM8K test ids 300+" ;;
          qwq) dirs=("${QWQ_TEST[@]}"); name="QwQ-32B GSM8K test ids 300+ (after the fact)" ;;
          r14) dirs=("${R14_TEST[@]}"); name="R1-Distill-Qwen-14B MATH-500 rows 168-499 (after the fact)" ;;
        esac
        present "${dirs[@]}" || continue
        for rows in finished complete; do
          $T replay "${dirs[@]}" --classifier "$NEXT" --methods "$efforts,afterthink" "--$rows-only" \
            --out "$R/report-$set-next-$rows" --title "$name: the next rule's efforts, $rows rows"
        done
      done
      ;;
    test)
      for set in qwq r14; do
        if [[ $set == qwq ]]; then dirs=("${QWQ_TEST[@]}"); name="QwQ-32B GSM8K test ids 300+"
        else dirs=("${R14_TEST[@]}"); name="R1-Distill-Qwen-14B MATH-500 rows 168-499"; fi
        present "${dirs[@]}" || { echo "skipped $name: its tables are not all there and complete" >&2; continue; }
        $T replay "${dirs[@]}" --classifier "$FIRST" --out "$R/report-$set-all" --title "$name: every method, all rows"
        $T replay "${dirs[@]}" --classifier "$FIRST" --finished-only --out "$R/report-$set-finished" \
          --title "$name: every method, rows whose thought closed"
        if [[ -f $CERTIFIED ]]; then
          for rows in all finished; do
            $T replay "${dirs[@]}" --classifier "$CERTIFIED" --methods llm,tandem:low,tandem:medium,route,cascade \
              $([[ $rows == finished ]] && echo --finished-only) --out "$R/report-$set-certified-$rows" \
              --title "$name: efforts with the gap certified at $CONFIDENCE, $rows rows"
          done
        fi
      done
      ;;
    *) echo "unknown step: $step (classifier, ship, certify, select, certify-next, test, test-next)" >&2; exit 2 ;;
  esac
done
