"""`tandem train fit | calibrate | score | show`: the classifier from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError

err = Console(stderr=True)
out = Console()

train_app = typer.Typer(no_args_is_help=True,
                        help="Train and calibrate the sufficiency classifier from probe tables.")

ProbeDirs = Annotated[list[Path], typer.Argument(help="probe run directories")]
SplitOpt = Annotated[str | None, typer.Option(help="how to describe the split in the model file "
                                                   "(default: the tables' dataset labels)")]
AllowTest = Annotated[bool, typer.Option(help="accept test-split tables (smoke checks only)")]


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _add_metric_rows(t: Table, m: dict[str, Any], prefix: str = "") -> None:
    """ROC-AUC, log-loss, Brier and the LLM-tokens yardstick, as `fit` (CV) and `score` (held out) print them."""
    t.add_row(f"{prefix}ROC-AUC", _f(m["roc_auc"]))
    t.add_row(f"{prefix}log-loss", _f(m["log_loss"]))
    t.add_row(f"{prefix}Brier", _f(m["brier"]))
    t.add_row("ROC-AUC of LLM tokens alone", _f(m["baseline_roc_auc_llm_tokens"]))


def _add_stage_rows(t: Table, by_stage: list[dict[str, Any]]) -> None:
    for s in by_stage:
        t.add_row(f"stage {s['stage']}: rows / positive rate / AUC",
                  f"{s['rows']} / {s['positive_rate']:.2f} / {_f(s['roc_auc'])}")


@train_app.command("fit")
def fit_cmd(
    probe_dirs: ProbeDirs,
    out_path: Annotated[Path, typer.Option("--out", help="classifier JSON to write")],
    kind: Annotated[str, typer.Option(help="logistic | gbdt")] = "gbdt",
    feature_groups: Annotated[str | None, typer.Option(
        help="comma-separated: slm_question, slm_insights, llm_stream, progress (default: all)")] = None,
    folds: Annotated[int, typer.Option(help="cross-validation folds, grouped by problem")] = 5,
    c: Annotated[float | None, typer.Option("--c", help="logistic: inverse regularisation strength")] = None,
    n_estimators: Annotated[int | None, typer.Option(help="gbdt: number of trees")] = None,
    max_depth: Annotated[int | None, typer.Option(help="gbdt: tree depth")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="gbdt: learning rate")] = None,
    tune: Annotated[bool, typer.Option(help="choose hyperparameters by nested grouped CV when none is given")]
    = True,
    split: SplitOpt = None,
    plot: Annotated[Path | None, typer.Option(help="reliability plot PNG (default: next to --out)")] = None,
    allow_test_split: AllowTest = False,
) -> None:
    """Cross-validate by problem, fit on every row, and write the classifier (uncalibrated)."""
    from .fit import fit

    given: dict[str, Any] = {"C": c, "n_estimators": n_estimators, "max_depth": max_depth,
                             "learning_rate": learning_rate}
    for_kind = {"logistic": {"C"}, "gbdt": {"n_estimators", "max_depth", "learning_rate"}}.get(kind, set())
    stray = [k for k, v in given.items() if v is not None and k not in for_kind]
    if stray:
        raise ConfigError(f"option(s) for {', '.join(stray)} do not apply to --kind {kind}")
    res = fit(probe_dirs, out_path, kind=kind, feature_groups=feature_groups, folds=folds,
              hyper={k: v for k, v in given.items() if v is not None}, split=split, plot=plot,
              allow_test_split=allow_test_split, tune=tune)
    cv, rows = res.cv, res.rows
    t = Table("", "value", title=f"{kind} classifier, {cv['folds']}-fold CV grouped by problem")
    t.add_row("rows (checkpoints incl. 0)", str(len(rows)))
    t.add_row("problems", str(len(rows.problems)))
    t.add_row("positive rate", f"{rows.y.mean():.3f}")
    t.add_row("features", f"{len(rows.features)} ({', '.join(res.classifier.feature_groups)})")
    _add_metric_rows(t, cv, prefix="CV ")
    if cv.get("tuning"):
        chosen = {k: v for k, v in res.classifier.spec.training.hyperparameters.items()
                  if any(k in point for point in cv["tuning"]["grid"])}
        t.add_row("hyperparameters (nested CV)", ", ".join(f"{k}={v}" for k, v in chosen.items()))
    _add_stage_rows(t, cv["by_stage"])
    out.print(t)
    out.print(f"wrote {res.path} and {res.plot}")
    err.print("[yellow]operating points are placeholders (threshold 0.5): run `tandem train calibrate` on a "
              "held-out probe table[/]")


@train_app.command("calibrate")
def calibrate_cmd(
    model: Annotated[Path, typer.Argument(help="classifier JSON (from tandem train fit)")],
    probe_dirs: Annotated[list[Path], typer.Argument(help="calibration probe run directories (held out)")],
    out_path: Annotated[Path, typer.Option("--out", help="classifier JSON to write (may be MODEL itself)")],
    effort: Annotated[str, typer.Option(help="all | low | medium | high")] = "all",
    objective: Annotated[str, typer.Option(help="lambda | target | budget | gap")] = "lambda",
    lam: Annotated[str | None, typer.Option(
        "--lambda", help="lambda per effort (low,medium,high; default 0.5,0.2,0.05): maximise accuracy - "
                         "lambda x relative FLOPs")] = None,
    target: Annotated[str | None, typer.Option(
        "--target-accuracy", help="target accuracy (fraction) per effort: reached at least cost")] = None,
    budget: Annotated[str | None, typer.Option(
        "--flops-budget", help="mean total FLOPs per effort as a fraction of the LLM alone's: best "
                               "accuracy within it")] = None,
    gap: Annotated[str | None, typer.Option(
        "--accuracy-gap", help="accuracy the LLM alone's may exceed per effort (fraction, e.g. 0.05,0.02,0.02): "
                               "reached at least cost")] = None,
    confidence: Annotated[float | None, typer.Option(
        help="with --objective gap: judge the gap by this one-sided lower bound of the paired accuracy "
             "difference against the LLM alone (e.g. 0.9), not by the point estimate")] = None,
    certify_order: Annotated[str, typer.Option(
        help="with --confidence: test the points per budget from the most cautious threshold (threshold), or "
             "in one sequence from the dearest (cost)")] = "threshold",
    finished_only: Annotated[bool, typer.Option(help="reasoning LLMs: calibrate on the problems whose thought "
                                                     "closed")] = False,
    complete_only: Annotated[bool, typer.Option(help="reasoning LLMs: calibrate on the problems whose thought "
                                                     "closed and whose LLM-alone answer was not cut")] = False,
    grid: Annotated[int, typer.Option(help="threshold grid points (quantiles of the probabilities)")] = 50,
    route: Annotated[bool, typer.Option(help="calibrate the route threshold (checkpoint 0)")] = True,
    cascade: Annotated[bool, typer.Option(help="calibrate the cascade threshold (SLM mean log-prob)")] = True,
    per_stage: Annotated[bool, typer.Option(help="then search a threshold per checkpoint stage, kept where it "
                                                 "improves the objective")] = True,
    finish: Annotated[bool, typer.Option(help="also try letting the LLM finish at the budget instead of "
                                              "handing over (continue hand-over)")] = True,
    split: SplitOpt = None,
    plot: Annotated[Path | None, typer.Option(help="trade-off plot PNG (default: next to --out)")] = None,
    allow_overlap: Annotated[bool, typer.Option(help="accept calibration problems the model was trained on")]
    = False,
    allow_test_split: AllowTest = False,
) -> None:
    """Choose each effort's budget and threshold (and the route / cascade thresholds) on a held-out table."""
    from ..classifier import load_classifier
    from .calibrate import calibrate, check_held_out, objectives_from_options, plot_calibration
    from .data import load_tables

    objs, shared = objectives_from_options(effort, objective, lam=lam, target=target, budget=budget, gap=gap,
                                           confidence=confidence, order=certify_order)
    clf = load_classifier(model)
    tables = load_tables(probe_dirs, allow_test_split=allow_test_split, finished_only=finished_only,
                         complete_only=complete_only)
    for table in tables:
        clf.check_models(table.manifest["llm"], table.manifest["slm"])
    overlap = check_held_out(clf, tables)
    if overlap and not allow_overlap:
        raise ConfigError(f"{len(overlap)} calibration problem(s) were used to train {model} (e.g. {overlap[0]}); "
                          "calibrate on a held-out table")
    new, res = calibrate(clf, tables, objs, route=shared if route else None, cascade=shared if cascade else None,
                         grid=grid, split=split, per_stage=per_stage, finish=finish)
    if finish and not res.table.can_finish:
        err.print("[yellow]note: letting the LLM finish was not tried: it needs continue hand-over tables[/]")
    path = new.save(out_path)
    plots = plot_calibration(res, plot or path.with_name(path.stem + ".tradeoff.png"))
    tab = res.table
    t = Table("point", "objective", "budget", "threshold", "per stage", "at budget", "accuracy", "cost", "met",
              title=f"calibrated on {tab.n} problems (LLM alone {tab.llm_accuracy:.3f}, "
                    f"SLM alone {tab.slm_accuracy:.3f})",
              caption="at budget: hand over, LLM finishes, or LLM alone (never hands over, no shadow passes); "
                      "cost: mean total FLOPs over the LLM alone's; met: the objective's constraint holds")
    for key, ch in res.chosen.items():
        p = ch.point
        stages = ", ".join(f"{k}: {v:g}" for k, v in p.stage_thresholds) or "–"
        at_budget = "–" if p.budget is None else _at_budget(p.threshold, dict(p.stage_thresholds), p.finish)
        conf = ch.objective.confidence
        t.add_row(key, f"{ch.objective.kind} {ch.objective.value:g}" + (f" @{conf:g}" if conf is not None else ""), str(p.budget or "–"), f"{p.threshold:g}", stages,
                  at_budget, f"{p.accuracy:.3f}",
                  f"{p.relative_cost:.3f}", "yes" if ch.satisfied else "[red]no[/]")
    out.print(t)
    costs = [res.chosen[e].point.relative_cost for e in ("low", "medium", "high") if e in res.chosen]
    if len(costs) == 3 and not costs[0] <= costs[1] <= costs[2]:
        err.print("[yellow]warning: the efforts' costs are not ordered low <= medium <= high[/]")
    for key, ch in res.chosen.items():
        if not ch.satisfied:
            err.print(f"[yellow]warning: {key}: no candidate meets '{ch.objective.describe()}'; chose the "
                      "closest (recorded as unsatisfied)[/]")
    if overlap:
        err.print(f"[yellow]warning: {len(overlap)} calibration problem(s) were seen in training[/]")
    out.print(f"wrote {path} and {', '.join(str(p) for p in plots)}")


def _at_budget(threshold: float, stage_thresholds: dict[int, float], finish: bool) -> str:
    from ..policy import EffortSetting

    if not EffortSetting(1, threshold, stage_thresholds, finish).hands_over:
        return "LLM alone"  # the effort never hands over
    return "LLM finishes" if finish else "hand over"


@train_app.command("score")
def score_cmd(
    model: Annotated[Path, typer.Argument(help="classifier JSON")],
    probe_dirs: ProbeDirs,
    out_path: Annotated[Path | None, typer.Option("--out", help="metrics JSON to write")] = None,
    plot: Annotated[Path | None, typer.Option(help="reliability plot PNG")] = None,
) -> None:
    """Measure a classifier on held-out probe tables (another split or domain): ROC-AUC, log-loss, Brier."""
    import json

    from .score import score

    res = score(model, probe_dirs, plot=plot)
    m = res.metrics
    t = Table("", "value", title=f"{model.name} on {', '.join(x['dataset'] for x in m['tables'])} (held out)")
    t.add_row("rows (checkpoints incl. 0) / problems", f"{m['rows']} / {m['problems']}")
    t.add_row("positive rate / mean probability", f"{m['positive_rate']:.3f} / {m['mean_probability']:.3f}")
    _add_metric_rows(t, m)
    _add_stage_rows(t, m["by_stage"])
    out.print(t)
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
        out.print(f"wrote {out_path}" + (f" and {plot}" if plot else ""))
    elif plot is not None:
        out.print(f"wrote {plot}")


@train_app.command("show")
def show_cmd(model: Annotated[Path, typer.Argument(help="classifier JSON")]) -> None:
    """Summarise a classifier file: models, training data, CV metrics and operating points."""
    from ..classifier import load_classifier

    clf = load_classifier(model)
    s = clf.spec
    out.print(f"[bold]{model}[/]: {s.kind}, {len(s.features)} features ({', '.join(clf.feature_groups)})")
    out.print(f"models: LLM {s.models.llm.name}, SLM {s.models.slm.name}")
    tr = s.training
    out.print(f"trained on {tr.problems} problems / {tr.rows} rows ({tr.split}); label: {tr.label}")
    if s.cv:
        out.print(f"CV ({s.cv.folds} folds by problem): ROC-AUC {_f(s.cv.roc_auc)}, log-loss {_f(s.cv.log_loss)}, "
                  f"Brier {_f(s.cv.brier)}")
    t = Table("effort", "max budget", "threshold", "at budget", "calibrated on", "objective",
              caption="at budget: hand over, LLM finishes, or LLM alone (never hands over)")
    cal = s.calibration
    for e, p in s.efforts.items():
        entry = getattr(cal, e) if cal else None
        t.add_row(e, str(p.max_budget), f"{p.threshold:g}", _at_budget(p.threshold, p.stage_thresholds, p.finish),
                  entry.split if entry else "[yellow]uncalibrated[/]",
                  f"{entry.objective.kind} {entry.objective.value:g}" if entry else "–")
    for key in ("route", "cascade"):
        thr = getattr(s, key)
        entry = getattr(cal, key) if cal else None
        t.add_row(key, "–", f"{thr.threshold:g}" if thr else "–", "–", entry.split if entry else "–",
                  f"{entry.objective.kind} {entry.objective.value:g}" if entry else "–")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
