"""Where a classifier's effort hands over on probe tables, and how often the SLM is right from there.

Replays one method (default `tandem:medium`) with the classifier's stop rule and groups the problems
by where the LLM stopped: before it wrote anything (checkpoint 0: the SLM alone), at a stage budget
or a boundary past it, where the thought ended, or nowhere (the LLM answered itself). For each group:
problems, the method right, and the LLM alone right on the same problems - the pairs behind the
report's accuracy difference. `--llm-complete` keeps only the problems whose LLM-alone answer was not
cut by its token limit (a recording cut mid-answer counts as wrong for the LLM alone).

    python benchmarks/handover_breakdown.py CLASSIFIER.json PROBE_DIR [PROBE_DIR ...] \\
        [--method tandem:medium] [--finished-only] [--llm-complete] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tandem.bench.replay_run import replay_dirs
from tandem.bench.store import read_manifest


def where(handover_tokens: int | None, stop_reason: str, budgets: Sequence[int]) -> tuple[int, str]:
    """A sortable label of where the method's LLM stopped: the stage budget (of the tables') the
    hand-over came at or just past."""
    if handover_tokens is None:
        return (10**9, f"no hand-over ({stop_reason or 'LLM answered'})")
    if handover_tokens == 0:
        return (0, "checkpoint 0 (SLM alone)")
    for budget in sorted(budgets):
        if handover_tokens < budget * 1.25:
            return (budget, f"past {budget} thought tokens ({stop_reason})")
    return (10**8, f"later ({stop_reason})")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classifier")
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--method", default="tandem:medium")
    ap.add_argument("--finished-only", action="store_true")
    ap.add_argument("--llm-complete", action="store_true")
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    outcomes, _, _ = replay_dirs([Path(t) for t in args.tables], f"llm,{args.method}", Path(args.classifier),
                                 finished_only=args.finished_only)
    llm_runs = {o.problem_id: o for o in outcomes if o.method == "llm" and o.error is None
                and not (args.llm_complete and o.truncated)}
    llm = {pid: o.correct for pid, o in llm_runs.items()}
    method = [o for o in outcomes if o.method == args.method and o.error is None and o.problem_id in llm]
    cost = sum(o.flops_total for o in method) / max(sum(llm_runs[o.problem_id].flops_total for o in method), 1e-9)
    budgets = sorted({int(b) for t in args.tables for b in read_manifest(t)["config"]["stage_budgets"]})
    groups: dict[tuple[int, str], list[tuple[bool, bool]]] = defaultdict(list)
    for o in method:
        groups[where(o.handover_tokens, o.stop_reason, budgets)].append((o.correct, llm[o.problem_id]))
    n = sum(len(g) for g in groups.values())
    print(f"{args.method} on {n} problems (finished only: {args.finished_only}, LLM answer complete only: "
          f"{args.llm_complete}), {args.classifier}")
    print(f"{'where the LLM stopped':44s} {'problems':>8s} {'right':>6s} {'LLM alone right':>16s}")
    rows = []
    for key in sorted(groups):
        pairs = groups[key]
        right, llm_right = sum(a for a, _ in pairs), sum(b for _, b in pairs)
        print(f"{key[1]:44s} {len(pairs):8d} {right:6d} {llm_right:16d}")
        rows.append({"where": key[1], "problems": len(pairs), "right": right, "llm_right": llm_right})
    total = [pair for pairs in groups.values() for pair in pairs]
    print(f"{'all':44s} {n:8d} {sum(a for a, _ in total):6d} {sum(b for _, b in total):16d}")
    print(f"total FLOPs vs the LLM alone on these problems: {cost:.3f}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"classifier": args.classifier, "tables": args.tables,
                                                   "method": args.method, "finished_only": args.finished_only,
                                                   "llm_complete": args.llm_complete, "relative_cost": cost,
                                                   "groups": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
