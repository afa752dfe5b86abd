"""How good must the sufficiency classifier be? Accuracy and cost reachable at each classifier quality.

On probe tables (never test tables), the classifier is replaced by synthetic scores of a chosen
quality: for every checkpoint row with label y (the SLM is right from there),
score = sigmoid(d * (y - 1/2) + noise), noise ~ N(0, 1), so a larger separation d gives a higher
ROC-AUC (measured, not assumed). Every operating point `tandem train calibrate` would try (stage
budgets x threshold quantiles x with/without `finish`) is replayed with shadow passes priced, and
the best are reported **in sample** - thresholds chosen on the very table they are scored on - so
the figures are an upper bound for a classifier of that AUC with this model pair.

    python benchmarks/classifier_headroom.py results/dev/gsm8k-train-0-99-continue \
        --separations 0.5,1,2,3,5 --seeds 3 --out results/classifier/headroom-dev.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np

from tandem.train.calibrate import DEFAULT_LAMBDAS, NEVER, CalibrationTable, Point, threshold_grid
from tandem.train.data import load_tables


class SyntheticScores:
    """A stand-in classifier: a fixed score per checkpoint row (keyed by its feature dict)."""

    name = "synthetic"
    uses_shadow = True  # priced like a classifier that reads the SLM's shadow passes

    def __init__(self, scores: dict[int, float]) -> None:
        self.scores = scores

    def sufficiency(self, features: dict[str, float]) -> float:
        return self.scores[id(features)]


def rows(tables: list[Any]) -> list[tuple[dict[str, float], int]]:
    out = []
    for t in tables:
        for rec in t.records:
            out.append((rec["ck0"]["features"], int(bool(rec["slm_alone"]["grade"]["correct"]))))
            out += [(ck["features"], int(bool(ck["slm"]["grade"]["correct"]))) for ck in rec["checkpoints"]]
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def summarise(points: list[Point], llm_accuracy: float) -> dict[str, Any]:
    def best(key: Any, pts: list[Point]) -> Point | None:
        return max(pts, key=key) if pts else None

    under = best(lambda p: (p.accuracy, -p.relative_cost), [p for p in points if p.relative_cost <= 0.8 + 1e-9])
    reach = [p for p in points if p.accuracy >= llm_accuracy - 1e-9]
    cheapest = min(reach, key=lambda p: p.relative_cost) if reach else None
    lam = {e: best(lambda p, v=v: (p.accuracy - v * p.relative_cost, -p.relative_cost), points)
           for e, v in DEFAULT_LAMBDAS.items()}
    return {
        "best_accuracy_at_cost_le_0.8": None if under is None else [under.accuracy, under.relative_cost],
        "least_cost_at_llm_accuracy": None if cheapest is None else [cheapest.accuracy, cheapest.relative_cost],
        "lambda_points": {e: [p.accuracy, p.relative_cost, p.budget, p.finish] for e, p in lam.items() if p},
    }


def operating_points(table: CalibrationTable, scores: np.ndarray, grid: int) -> list[Point]:
    """Every point calibration tries: stage budgets x threshold quantiles x with/without `finish`."""
    thresholds = threshold_grid(scores, grid, low=0.0, high=NEVER)
    return [table.tandem(b, t, finish=fin) for fin in (False, True) for b in table.budgets for t in thresholds]


def write_json(path: str | None, doc: dict[str, Any]) -> None:
    """Write the figures with the machine and the date, when a path is given."""
    if path:
        with open(path, "w") as f:
            json.dump({**doc, "machine": platform.platform(), "date": time.strftime("%Y-%m-%d")}, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--separations", default="0.5,1,2,3,5", help="values of d (comma-separated)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--grid", type=int, default=30, help="threshold quantiles per point")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    tables = load_tables(args.tables)
    data = rows(tables)
    y = np.asarray([lab for _, lab in data])
    results = []
    for d in [float(x) for x in args.separations.split(",")]:
        per_seed = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            s = 1.0 / (1.0 + np.exp(-(d * (y - 0.5) + rng.standard_normal(len(y)))))
            table = CalibrationTable(tables, SyntheticScores({id(f): float(v) for (f, _), v in zip(data, s, strict=True)}))
            points = operating_points(table, s, args.grid)
            per_seed.append({"auc": auc(y, s), **summarise(points, table.llm_accuracy)})
        results.append({"separation": d, "seeds": per_seed})
        a = np.mean([r["auc"] for r in per_seed])
        under = [r["best_accuracy_at_cost_le_0.8"] for r in per_seed if r["best_accuracy_at_cost_le_0.8"]]
        reach = [r["least_cost_at_llm_accuracy"] for r in per_seed if r["least_cost_at_llm_accuracy"]]
        med = [r["lambda_points"]["medium"] for r in per_seed]
        print(f"d={d:<4g} AUC {a:.3f} | best accuracy at <=0.8x: "
              f"{np.mean([u[0] for u in under]):.3f} | LLM accuracy ({table.llm_accuracy:.3f}) reached at "
              f"{(f'{np.mean([r[1] for r in reach]):.2f}x in {len(reach)}/{args.seeds} seeds') if reach else 'never'} | "
              f"medium (lambda 0.2): {np.mean([m[0] for m in med]):.3f} at {np.mean([m[1] for m in med]):.2f}x")
    doc = {"tables": args.tables, "problems": len({r['problem_id'] for t in tables for r in t.records}),
           "rows": len(data), "positive_rate": float(y.mean()), "llm_accuracy": table.llm_accuracy,
           "slm_accuracy": table.slm_accuracy, "grid": args.grid, "results": results}
    write_json(args.out, doc)


if __name__ == "__main__":
    main()
