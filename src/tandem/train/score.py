"""A fitted classifier's discrimination and calibration on held-out probe tables.

What `tandem train fit` measures by cross-validation on its own split, measured again on other
tables: the test split of the same domain, or another domain (a math-trained classifier on code,
zero-shot). Nothing is fitted or chosen here, so test tables are accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classifier import SufficiencyClassifier, load_classifier
from .data import build_rows, load_tables
from .fit import _metrics, _need_sklearn, reliability_plot, stage_metrics


@dataclass
class ScoreResult:
    """Held-out metrics (`metrics`, JSON-ready) and the probabilities they were computed from."""

    metrics: dict[str, Any]
    y: np.ndarray
    p: np.ndarray


def score_tables(clf: SufficiencyClassifier, dirs: list[str | Path] | list[Path]) -> ScoreResult:
    """ROC-AUC, log-loss and Brier of `clf` on every checkpoint row of the tables, overall and per stage."""
    _need_sklearn()
    tables = load_tables(dirs, allow_test_split=True)
    for table in tables:
        clf.check_models(table.manifest["llm"], table.manifest["slm"])
    rows = build_rows(tables, features=clf.features)  # the classifier's columns, in its order
    p = clf.predict_proba(rows.X)
    metrics = {
        "classifier": clf.name,
        "tables": [{"path": str(t.path), "dataset": t.split} for t in tables],
        "rows": len(rows),
        "problems": len(rows.problems),
        "positive_rate": float(rows.y.mean()),
        **_metrics(rows.y, p),
        "mean_probability": float(p.mean()),
        **stage_metrics(rows, p),
    }
    return ScoreResult(metrics, rows.y, p)


def score(model: str | os.PathLike[str], dirs: list[str | Path] | list[Path], *,
          plot: str | os.PathLike[str] | None = None) -> ScoreResult:
    """Load `model`, score it on the tables and, with `plot`, draw the reliability diagram."""
    clf = load_classifier(model)
    res = score_tables(clf, dirs)
    if plot is not None:
        names = ", ".join(t["dataset"] for t in res.metrics["tables"])
        reliability_plot(res.y, res.p, plot, title=f"Reliability on {names}", label="held out")
    return res
