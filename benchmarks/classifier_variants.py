"""Which classifier design pays? Real classifiers' out-of-fold scores, priced like the head-room study.

For each variant (model kind x feature groups x label), out-of-fold probabilities come from the
project's own grouped cross-validation (`tandem.train.fit.cross_validate`, fixed default
hyperparameters); every operating point `tandem train calibrate` would try is then replayed on the
same table with those scores, and the best are reported **in sample** (thresholds chosen on the table
they are scored on), exactly as `classifier_headroom.py` does for synthetic scores - so the rows
compare with its table. Labels: `sufficient` (the SLM is right from this checkpoint: what
`tandem train fit` uses) and `no-regret` (sufficient, or the LLM alone is wrong anyway, so handing
over loses nothing). Run on probe tables that are not test tables.

    python benchmarks/classifier_variants.py results/dev/gsm8k-train-0-99-continue \
        --out results/classifier/variants-dev.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import numpy as np
from classifier_headroom import SyntheticScores, auc, operating_points, rows, summarise, write_json

from tandem.train.calibrate import CalibrationTable
from tandem.train.data import build_rows, load_tables
from tandem.train.fit import cross_validate, hyperparameters

VARIANTS: list[tuple[str, str | None, str]] = [  # kind, feature groups (None: all), label
    ("logistic", None, "sufficient"),
    ("gbdt", None, "sufficient"),
    ("logistic", "llm_stream,progress", "sufficient"),
    ("logistic", "progress", "sufficient"),
    ("logistic", "slm_question,slm_insights,progress", "sufficient"),
    ("logistic", None, "no-regret"),
]


def no_regret_labels(tables: list[Any]) -> np.ndarray:
    """Per training row (in `build_rows` order): the SLM is right here, or the LLM alone is wrong."""
    out = []
    for t in tables:
        for rec in t.records:
            llm_alone = rec.get("llm_solve") or rec["llm"]  # hint tables: the LLM's own solve, as replay prices it
            llm_wrong = not bool(llm_alone["grade"]["correct"])
            out.append(int(bool(rec["slm_alone"]["grade"]["correct"]) or llm_wrong))
            out += [int(bool(ck["slm"]["grade"]["correct"]) or llm_wrong) for ck in rec["checkpoints"]]
    return np.asarray(out, dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--grid", type=int, default=30, help="threshold quantiles per point")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    tables = load_tables(args.tables)
    data = rows(tables)  # (feature dict, sufficient label) in build_rows order
    sufficient = np.asarray([lab for _, lab in data])
    results = []
    for kind, groups, label in VARIANTS:
        r = build_rows(tables, groups)
        assert len(r) == len(data) and np.array_equal(r.y, sufficient)
        if label == "no-regret":
            r = replace(r, y=no_regret_labels(tables))
        _, oof = cross_validate(kind, r, hyperparameters(kind))
        scores = SyntheticScores({id(f): float(v) for (f, _), v in zip(data, oof, strict=True)})
        scores.uses_shadow = groups is None or "slm_" in groups  # no shadow features: no scoring pass
        table = CalibrationTable(tables, scores)
        points = operating_points(table, oof, args.grid)
        s = summarise(points, table.llm_accuracy)
        row = {"kind": kind, "feature_groups": groups or "all", "label": label,
               "auc_own_label": auc(r.y, oof), "auc_sufficient": auc(sufficient, oof), **s}
        results.append(row)
        under, reach, med = s["best_accuracy_at_cost_le_0.8"], s["least_cost_at_llm_accuracy"], s["lambda_points"]["medium"]
        print(f"{kind:8s} {row['feature_groups']:36s} {label:10s} AUC {row['auc_own_label']:.3f} "
              f"(sufficient {row['auc_sufficient']:.3f}) | best acc <=0.8x {under[0] if under else float('nan'):.3f} | "
              f"LLM acc ({table.llm_accuracy:.3f}) at {f'{reach[1]:.2f}x' if reach else 'never'} | "
              f"medium {med[0]:.3f} at {med[1]:.2f}x", flush=True)
    doc = {"tables": args.tables, "problems": len({r['problem_id'] for t in tables for r in t.records}),
           "rows": len(data), "llm_accuracy": table.llm_accuracy, "grid": args.grid, "results": results}
    write_json(args.out, doc)


if __name__ == "__main__":
    main()
