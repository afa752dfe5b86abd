"""Compare probe tables of one LLM on the problems they all hold: per table (SLM, hand-over mode) and
method, accuracy and mean total / generated FLOPs over the LLM alone's, SLM tokens, and the trial
answers' accuracy per checkpoint. Used to choose the SLM and the hand-over mode on the dev slice.

    python scripts/handover_compare.py RUN_DIR [RUN_DIR ...] [--finished-only]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tandem.bench.probe_records import thought_closed
from tandem.bench.replay import PairParams, replay
from tandem.bench.replay_run import default_methods, load_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--finished-only", action="store_true", help="only problems whose thought closed")
    args = ap.parse_args()
    tables = {d: load_probe(d) for d in args.runs}
    common = set.intersection(*({r["problem_id"] for r in recs if "error" not in r} for _, recs in tables.values()))
    if args.finished_only:
        common = {pid for pid in common
                  if all(thought_closed(r) for _, recs in tables.values() for r in recs if r["problem_id"] == pid)}
    print(f"{len(common)} problems in every table{' (thought closed)' if args.finished_only else ''}\n")
    print("| table | method | accuracy | total vs LLM | generated vs LLM | SLM tokens gen |")
    print("|---|---|---|---|---|---|")
    for d, (man, recs) in tables.items():
        p = PairParams(man["llm"]["n_params"], man["slm"]["n_params"])
        budgets = tuple(man["config"]["stage_budgets"])
        rows = [r for r in recs if r.get("problem_id") in common]
        llm = [replay(r, "llm", p) for r in rows]
        base_t = sum(o.flops_total for o in llm)
        base_g = sum(o.flops_generated for o in llm)
        for m in default_methods(budgets, False, thinks=True):
            outs = [replay(r, m, p, handover=man["config"]["handover"], budgets=budgets) for r in rows]
            acc = sum(o.correct for o in outs)
            print(f"| {d.name} | {m} | {acc}/{len(outs)} | {sum(o.flops_total for o in outs) / base_t:.2f} | "
                  f"{sum(o.flops_generated for o in outs) / base_g:.2f} | "
                  f"{sum(o.slm_generated_tokens for o in outs) / max(len(outs), 1):.0f} |")
        trials = [(ck["llm_tokens"], bool(ck.get("trial") and ck["trial"]["correct"])) for r in rows
                  for ck in r["checkpoints"] if ck.get("trial")]
        if trials:
            right = sum(t for _, t in trials)
            print(f"| {d.name} | trial answers at checkpoints | {right}/{len(trials)} | | | |")


if __name__ == "__main__":
    main()
