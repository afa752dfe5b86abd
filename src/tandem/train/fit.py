"""Fit the sufficiency classifier: grouped cross-validation, then one model on every row.

Cross-validation groups rows by problem (scikit-learn's GroupKFold, 5 folds or one per problem
when there are fewer), so no problem is seen on both sides of a fold. Out-of-fold probabilities
are computed by the exported classifier itself (the numpy code that runs at inference), and give
ROC-AUC, log-loss, Brier score, per-stage AUC and a reliability plot. As a yardstick the AUC of
the LLM tokens written so far (no model at all) is reported beside them.

Hyperparameters, unless given, are chosen by grouped-CV log-loss over a small grid (`TUNING_GRIDS`:
the regularisation strength; tree count, depth and leaf size), nested inside every outer fold so
the reported CV figures are those of the whole procedure; the final model uses the choice made on
all rows.

The operating points written here are placeholders (threshold 0.5, budgets spread over the
probe's stage budgets); `tandem train calibrate` chooses them on a held-out table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classifier import FORMAT, VERSION, SufficiencyClassifier, classifier_from_dict
from ..errors import ConfigError
from .data import Rows, build_rows, load_tables, model_pair, parse_groups, table_groups, training_description

KINDS = ("logistic", "gbdt")
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "logistic": {"C": 1.0, "max_iter": 5000},
    "gbdt": {"n_estimators": 150, "max_depth": 3, "learning_rate": 0.05, "min_samples_leaf": 5,
             "subsample": 1.0, "random_state": 0},
}
DEFAULT_FOLDS = 5
INNER_FOLDS = 4
UNCALIBRATED_THRESHOLD = 0.5
# searched when no hyperparameter is given: regularisation is what a few hundred problems need most
TUNING_GRIDS: dict[str, list[dict[str, Any]]] = {
    "logistic": [{"C": c} for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)],
    "gbdt": [{"n_estimators": n, "max_depth": d, "min_samples_leaf": leaf, "learning_rate": 0.05}
             for n in (50, 150) for d in (2, 3) for leaf in (5, 30)],
}


def _need_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ConfigError("training needs scikit-learn: pip install 'tandem[train]'") from exc


def hyperparameters(kind: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"unknown classifier kind {kind!r}; choose {' or '.join(KINDS)}")
    hyper = dict(DEFAULT_HYPERPARAMETERS[kind])
    unknown = set(overrides or {}) - set(hyper)
    if unknown:
        raise ConfigError(f"unknown {kind} hyperparameter(s): {', '.join(sorted(unknown))}")
    hyper.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return hyper


def fit_estimator(kind: str, X: np.ndarray, y: np.ndarray, hyper: dict[str, Any]) -> Any:
    """The scikit-learn model (a scaler + logistic regression pipeline, or gradient boosting)."""
    _need_sklearn()
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        est = Pipeline([("scale", StandardScaler()),
                        ("lr", LogisticRegression(C=hyper["C"], max_iter=hyper["max_iter"]))])
    else:
        from sklearn.ensemble import GradientBoostingClassifier

        est = GradientBoostingClassifier(**hyper)
    return est.fit(X, y)


def export_params(kind: str, est: Any, X_ref: np.ndarray) -> dict[str, Any]:
    """`normalization` and `params` of a classifier file from a fitted scikit-learn model."""
    if kind == "logistic":
        scaler, lr = est.named_steps["scale"], est.named_steps["lr"]
        return {"normalization": {"mean": [float(v) for v in scaler.mean_],
                                  "scale": [float(v) for v in scaler.scale_]},
                "params": {"coef": [float(v) for v in lr.coef_[0]], "intercept": float(lr.intercept_[0])}}
    trees = []
    lr_rate = float(est.learning_rate)
    for reg in est.estimators_[:, 0]:
        t = reg.tree_
        leaf = t.children_left == -1
        trees.append({
            "feature": [(-1 if is_leaf else int(f)) for f, is_leaf in zip(t.feature, leaf, strict=True)],
            "threshold": [(0.0 if is_leaf else float(v)) for v, is_leaf in zip(t.threshold, leaf, strict=True)],
            "left": [int(v) for v in t.children_left], "right": [int(v) for v in t.children_right],
            "value": [float(v) for v in t.value[:, 0, 0]],
        })
    # the initial log-odds, through public methods only: the decision minus the trees' sum
    x0 = X_ref[:1]
    init = float(est.decision_function(x0)[0]) - lr_rate * sum(float(r.predict(x0)[0]) for r in est.estimators_[:, 0])
    return {"normalization": None, "params": {"init": init, "learning_rate": lr_rate, "trees": trees}}


def default_efforts(budgets: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Uncalibrated operating points: threshold 0.5; budgets at a quarter, half and all of the
    probe's stage budgets (64 / 128 / 256 for 32,64,128,192,256)."""
    b = sorted(budgets)
    n = len(b)
    picks = {"low": b[round((n - 1) * 0.25)], "medium": b[(n - 1) // 2], "high": b[-1]}
    return {e: {"max_budget": v, "threshold": UNCALIBRATED_THRESHOLD, "stage_thresholds": {}}
            for e, v in picks.items()}


def make_classifier(kind: str, est: Any, rows: Rows, *, training: dict[str, Any],
                    cv: dict[str, Any] | None = None) -> SufficiencyClassifier:
    budgets = sorted(set.intersection(*(set(t.budgets) for t in rows.tables))) if rows.tables else [64, 128, 256]
    doc = {
        "format": FORMAT, "version": VERSION, "kind": kind, "features": list(rows.features),
        **export_params(kind, est, rows.X),
        "models": model_pair(rows.tables[0]) if rows.tables else
        {r: {"name": "", "n_params": 0} for r in ("llm", "slm")},
        "training": training, "cv": cv,
        "efforts": default_efforts(budgets or [64, 128, 256]), "route": None, "cascade": None,
        "calibration": None,
    }
    return classifier_from_dict(doc, source="fitted model")


# --- cross-validation ----------------------------------------------------------------------------


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import brier_score_loss

    return {"roc_auc": _auc(y, p), "log_loss": _log_loss(y, p), "brier": float(brier_score_loss(y, p))}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def _subset(rows: Rows, idx: np.ndarray) -> Rows:
    return Rows(rows.features, rows.X[idx], rows.y[idx], [rows.groups[i] for i in idx], rows.stage[idx],
                rows.llm_tokens[idx], rows.tables)


def _one_class_rate(y_train: np.ndarray, n: int) -> np.ndarray | None:
    """A fold whose training rows hold one class: its base rate is all there is to learn (else None)."""
    if len(np.unique(y_train)) < 2:
        return np.full(n, float(y_train.mean()))
    return None


def grid_scores(kind: str, rows: Rows, base: dict[str, Any], grid: Sequence[dict[str, Any]],
                folds: int = INNER_FOLDS) -> list[float]:
    """Mean grouped-CV log-loss of each grid point (scikit-learn's own probabilities: selection only)."""
    from sklearn.model_selection import GroupKFold

    k = min(folds, len(rows.problems))
    if k < 2:
        return [0.0] * len(grid)
    splits = list(GroupKFold(n_splits=k).split(rows.X, rows.y, rows.groups))
    scores = []
    for point in grid:
        losses = []
        for train, test in splits:
            ytr = rows.y[train]
            p = _one_class_rate(ytr, len(test))
            if p is None:
                p = fit_estimator(kind, rows.X[train], ytr, {**base, **point}).predict_proba(rows.X[test])[:, 1]
            losses.append(_log_loss(rows.y[test], p))
        scores.append(float(np.mean(losses)))
    return scores


def select_hyperparameters(kind: str, rows: Rows, base: dict[str, Any], grid: Sequence[dict[str, Any]] | None,
                           ) -> tuple[dict[str, Any], list[float]]:
    """`base` itself without a grid; else the grid point with the least inner-CV log-loss on `rows`."""
    if not grid:
        return dict(base), []
    scores = grid_scores(kind, rows, base, grid)
    return {**base, **grid[int(np.argmin(scores))]}, scores


def _fold_predict(kind: str, rows: Rows, train: np.ndarray, test: np.ndarray, hyper: dict[str, Any],
                  grid: Sequence[dict[str, Any]] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    rate = _one_class_rate(rows.y[train], len(test))
    if rate is not None:
        return rate, dict(hyper)
    sub = _subset(rows, train)
    hyper, _ = select_hyperparameters(kind, sub, hyper, grid)
    est = fit_estimator(kind, sub.X, sub.y, hyper)
    clf = make_classifier(kind, est, sub, training=_placeholder_training(sub))
    return clf.predict_proba(rows.X[test]), hyper


def _placeholder_training(rows: Rows) -> dict[str, Any]:
    return {"probe_runs": [], "split": "cv fold", "rows": len(rows), "positives": int(rows.y.sum()),
            "problems": len(rows.problems), "label": "", "feature_groups": []}


def cross_validate(kind: str, rows: Rows, hyper: dict[str, Any], folds: int = DEFAULT_FOLDS,
                   grid: Sequence[dict[str, Any]] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Grouped k-fold by problem; returns the `cv` section of the file and out-of-fold probabilities.
    With a `grid`, each outer fold chooses its hyperparameters on its own training rows (nested)."""
    _need_sklearn()
    from sklearn.model_selection import GroupKFold

    n_problems = len(rows.problems)
    k = min(folds, n_problems)
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 problems, the tables hold {n_problems}")
    oof = np.zeros(len(rows), dtype=np.float64)
    per_fold = []
    for train, test in GroupKFold(n_splits=k).split(rows.X, rows.y, rows.groups):
        p, chosen = _fold_predict(kind, rows, train, test, hyper, grid)
        oof[test] = p
        per_fold.append({"rows": len(test), "problems": len({rows.groups[i] for i in test}),
                         **_metrics(rows.y[test], p), "hyperparameters": chosen if grid else {}})
    cv = {"folds": k, "grouping": "problem_id (GroupKFold)", **_metrics(rows.y, oof), "per_fold": per_fold,
          **stage_metrics(rows, oof)}
    return cv, oof


def stage_metrics(rows: Rows, p: np.ndarray) -> dict[str, Any]:
    """`by_stage` (rows, positive rate, ROC-AUC of `p` per checkpoint stage) and the yardstick
    `baseline_roc_auc_llm_tokens` (the LLM tokens written so far, alone, as the score)."""
    by_stage = []
    for s in sorted(set(rows.stage.tolist())):
        m = rows.stage == s
        by_stage.append({"stage": int(s), "rows": int(m.sum()), "positive_rate": float(rows.y[m].mean()),
                         "roc_auc": _auc(rows.y[m], p[m])})
    return {"by_stage": by_stage, "baseline_roc_auc_llm_tokens": _auc(rows.y, rows.llm_tokens.astype(float))}


def reliability_plot(y: np.ndarray, p: np.ndarray, path: str | os.PathLike[str], *, title: str = "",
                     bins: int = 10, label: str = "out-of-fold") -> Path:
    """Observed rate against mean predicted probability per bin, with the bin counts below."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'tandem[eval]'") from exc
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    fig = Figure(figsize=(6.0, 6.5), layout="constrained")
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", label="perfectly calibrated")
    xs, ys, ns = [], [], []
    for b in range(bins):
        m = idx == b
        ns.append(int(m.sum()))
        if m.any():
            xs.append(float(p[m].mean()))
            ys.append(float(y[m].mean()))
    ax.plot(xs, ys, marker="o", label=label)
    ax.set_ylabel("fraction the SLM got right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar((edges[:-1] + edges[1:]) / 2, ns, width=1.0 / bins * 0.9)
    ax_n.set_xlabel("predicted probability")
    ax_n.set_ylabel("rows")
    fig.suptitle(title or "Reliability (cross-validated)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    return out


# --- the command's work --------------------------------------------------------------------------


@dataclass
class FitResult:
    classifier: SufficiencyClassifier
    rows: Rows
    cv: dict[str, Any]
    oof: np.ndarray
    path: Path
    plot: Path | None


def fit(dirs: Sequence[str | Path], out: str | Path, *, kind: str = "gbdt",
        feature_groups: str | Sequence[str] | None = None, folds: int = DEFAULT_FOLDS,
        hyper: dict[str, Any] | None = None, split: str | None = None, plot: str | Path | None = None,
        allow_test_split: bool = False, tune: bool = True) -> FitResult:
    """Cross-validate, fit on all rows and save the classifier to `out` (+ a reliability plot).
    With `tune` and no `hyper` given, the hyperparameters are searched (`TUNING_GRIDS`), nested in CV."""
    h = hyperparameters(kind, hyper)
    tables = load_tables(dirs, allow_test_split=allow_test_split)
    groups = parse_groups(feature_groups) if feature_groups is not None else table_groups(tables)
    rows = build_rows(tables, groups)
    if len(np.unique(rows.y)) < 2:
        raise ConfigError("every row has the same label: there is nothing to learn from these tables")
    grid = TUNING_GRIDS[kind] if tune and not hyper else None
    cv, oof = cross_validate(kind, rows, h, folds, grid)
    h, scores = select_hyperparameters(kind, rows, h, grid)
    if grid:
        cv["tuning"] = {"metric": "log_loss", "inner_folds": INNER_FOLDS, "grid": list(grid), "scores": scores}
    est = fit_estimator(kind, rows.X, rows.y, h)
    clf = make_classifier(kind, est, rows, training=training_description(rows, groups, h, split), cv=cv)
    path = clf.save(out)
    plot_path = Path(plot) if plot else path.with_name(path.stem + ".reliability.png")
    made = reliability_plot(rows.y, oof, plot_path,
                            title=f"{kind} on {len(rows.problems)} problems, {cv['folds']}-fold CV by problem")
    return FitResult(clf, rows, cv, oof, path, made)
