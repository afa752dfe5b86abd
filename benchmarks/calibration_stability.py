"""How far a calibrated operating point's accuracy moves off the problems it was chosen on.

Splits the calibration problems in two at random (halves, or `--fit-share` of them to choose on),
calibrates the classifier's efforts on one part (the same objectives as `tandem train calibrate`),
replays the chosen points on the other part, and repeats. Prints, per effort, the accuracy gap to the LLM alone that the calibration half promised
and the one the held-out half gave: the optimism of choosing a point on a table of this size. Reads
calibration tables only, never a test table.

    python benchmarks/calibration_stability.py CLASSIFIER.json CALIB_DIR [CALIB_DIR ...] \\
        [--accuracy-gap 0.05,0.02,0.02] [--confidence C] [--finished-only | --complete-only] [--splits 20]
        [--fit-share 0.5] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from tandem.classifier import load_classifier
from tandem.train.calibrate import CalibrationTable, calibrate, objectives_from_options
from tandem.train.data import ProbeTable, load_tables


def halves(tables: list[ProbeTable], rng: random.Random, share: float = 0.5) -> tuple[list[ProbeTable], list[ProbeTable]]:
    """The tables' problems split in two at random, `share` of them in the first part (each table split
    alike)."""
    ids = sorted({r["problem_id"] for t in tables for r in t.records})
    rng.shuffle(ids)
    first = set(ids[: round(len(ids) * share)])

    def keep(chosen: bool) -> list[ProbeTable]:
        return [replace(t, records=[r for r in t.records if (r["problem_id"] in first) == chosen]) for t in tables]

    return keep(True), keep(False)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classifier")
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--accuracy-gap", default="0.05,0.02,0.02")
    ap.add_argument("--confidence", type=float, help="judge the gap by this one-sided lower bound")
    ap.add_argument("--certify-order", default="threshold", choices=["threshold", "cost"])
    ap.add_argument("--finished-only", action="store_true")
    ap.add_argument("--complete-only", action="store_true", help="the LLM alone's answer not cut either")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--fit-share", type=float, default=0.5, help="share of the problems a point is chosen on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)
    if not 0 < args.fit_share < 1:
        ap.error("--fit-share is a fraction in (0, 1)")
    clf = load_classifier(args.classifier)
    tables = load_tables(args.tables, finished_only=args.finished_only, complete_only=args.complete_only)
    objectives, _ = objectives_from_options("all", "gap", gap=args.accuracy_gap, confidence=args.confidence,
                                            order=args.certify_order)
    rng = random.Random(args.seed)
    gaps: dict[str, list[tuple[float, float, float, float, float]]] = {}
    for _ in range(args.splits):
        fit_half, held_half = halves(tables, rng, args.fit_share)
        _, res = calibrate(clf, fit_half, objectives, route=None, cascade=None)
        held = CalibrationTable(held_half, clf)
        for effort, c in res.chosen.items():
            p = c.point
            assert p.budget is not None
            out = held.tandem(p.budget, p.threshold, dict(p.stage_thresholds), p.finish)
            gaps.setdefault(effort, []).append((p.accuracy - res.table.llm_accuracy, out.accuracy - held.llm_accuracy,
                                                p.relative_cost, out.relative_cost, float(c.satisfied)))
    summary = {
        effort: {
            "splits": len(rows),
            "promised_gap_mean": statistics.fmean(r[0] for r in rows),
            "held_out_gap_mean": statistics.fmean(r[1] for r in rows),
            "held_out_gap_min": min(r[1] for r in rows),
            "held_out_gap_max": max(r[1] for r in rows),
            "promised_cost_mean": statistics.fmean(r[2] for r in rows),
            "held_out_cost_mean": statistics.fmean(r[3] for r in rows),
            "satisfied_share": statistics.fmean(r[4] for r in rows),
            # how often the held-out half kept the promise the objective makes
            "held_out_within_gap_share": statistics.fmean(r[1] >= -objectives[effort].value - 1e-9 for r in rows),
        }
        for effort, rows in gaps.items()
    }
    n = len({r["problem_id"] for t in tables for r in t.records})
    print(f"{args.splits} random splits ({args.fit_share:g} to choose on) of {n} calibration problems "
          f"(finished only: {args.finished_only}, "
          f"LLM answer complete only: {args.complete_only})")
    print("effort  accuracy - LLM alone's: promised / held out (min..max)   cost vs LLM: promised / held out"
          "   met on the half / held out within the gap")
    for effort, s in summary.items():
        print(f"{effort:7s} {100 * s['promised_gap_mean']:+6.1f} / {100 * s['held_out_gap_mean']:+6.1f} points "
              f"({100 * s['held_out_gap_min']:+.1f}..{100 * s['held_out_gap_max']:+.1f})"
              f"          {s['promised_cost_mean']:.3f} / {s['held_out_cost_mean']:.3f}"
              f"        {100 * s['satisfied_share']:.0f}% / {100 * s['held_out_within_gap_share']:.0f}%")
    result = {"classifier": args.classifier, "tables": args.tables, "problems": n, "finished_only": args.finished_only,
              "complete_only": args.complete_only, "certify_order": args.certify_order, "fit_share": args.fit_share,
           "accuracy_gap": args.accuracy_gap, "confidence": args.confidence, "seed": args.seed, "efforts": summary}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
