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
from ..errors import ConfigError
from .data import build_rows, load_tables
from .fit import _auc, _metrics, _need_sklearn, reliability_plot


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
    rows = build_rows(tables, clf.feature_groups)
    if list(rows.features) != list(clf.features):  # same groups, another order: reorder the columns
        col = {name: i for i, name in enumerate(rows.features)}
        missing = [f for f in clf.features if f not in col]
        if missing:
            raise ConfigError(f"the tables lack feature(s) {', '.join(missing[:6])} the classifier uses")
        x = rows.X[:, [col[f] for f in clf.features]]
    else:
        x = rows.X
    p = clf.predict_proba(x)
    by_stage = []
    for s in sorted(set(rows.stage.tolist())):
        m = rows.stage == s
        by_stage.append({"stage": int(s), "rows": int(m.sum()), "positive_rate": float(rows.y[m].mean()),
                         "roc_auc": _auc(rows.y[m], p[m])})
    metrics = {
        "classifier": clf.name,
        "tables": [{"path": str(t.path), "dataset": t.split} for t in tables],
        "rows": len(rows),
        "problems": len(rows.problems),
        "positive_rate": float(rows.y.mean()),
        **_metrics(rows.y, p),
        "mean_probability": float(p.mean()),
        "by_stage": by_stage,
        "baseline_roc_auc_llm_tokens": _auc(rows.y, rows.llm_tokens.astype(float)),
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
