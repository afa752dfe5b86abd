"""Training rows, fitting, calibration and the `tandem train` commands, on synthetic probe tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from synthetic import LLM_PARAMS, SLM_PARAMS, make_table
from tandem.bench.replay import PairParams, replay
from tandem.bench.replay_run import default_methods, replay_dirs
from tandem.bench.store import read_records
from tandem.classifier import load_classifier
from tandem.errors import ConfigError
from tandem.features import FEATURE_GROUPS
from tandem.train.calibrate import (
    DEFAULT_LAMBDAS,
    NEVER,
    Objective,
    Point,
    calibrate,
    choose_certified,
    objectives_from_options,
    refine_per_stage,
)
from tandem.train.data import build_rows, load_tables, parse_groups
from tandem.train.fit import fit

pytest.importorskip("sklearn")

P = PairParams(LLM_PARAMS, SLM_PARAMS)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probes")
    return {"train": make_table(root / "train", 0, 42), "calib": make_table(root / "calib", 100, 142)}


@pytest.fixture(scope="module")
def model(tables: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit([tables["train"]], tmp_path_factory.mktemp("m") / "m.json", kind="gbdt",
               hyper={"n_estimators": 40}).path


def test_rows_one_per_checkpoint_including_zero(tables: dict[str, Path]) -> None:
    recs = list(read_records(tables["train"]))
    rows = build_rows(load_tables([tables["train"]]))
    assert len(rows) == sum(1 + len(r["checkpoints"]) for r in recs)
    first = recs[0]
    n0 = 1 + len(first["checkpoints"])
    assert rows.y[0] == first["slm_alone"]["grade"]["correct"]
    assert rows.y[1:n0].tolist() == [int(c["slm"]["grade"]["correct"]) for c in first["checkpoints"]]
    assert rows.stage[:n0].tolist() == [0] + [c["stage"] for c in first["checkpoints"]]
    assert rows.llm_tokens[:n0].tolist() == [0] + [c["llm_tokens"] for c in first["checkpoints"]]
    assert set(rows.groups[:n0]) == {first["problem_id"]}
    # by default every feature group the table has (these synthetic tables record no trial answers and
    # no reasoning LLM's thought)
    have = ("slm_question", "slm_insights", "llm_stream", "progress")
    assert len(rows.features) == sum(len(FEATURE_GROUPS[g]) for g in have)


def test_the_model_pair_records_how_entropies_were_measured(tables: dict[str, Path]) -> None:
    from tandem.train.data import model_pair

    table = load_tables([tables["train"]])[0]
    assert model_pair(table)["slm"]["entropy"] == "exact"  # no record of it: llama.cpp's exact entropies
    table.manifest["entropy"] = {"llm": "topk", "slm": "exact"}
    pair = model_pair(table)
    assert (pair["llm"]["entropy"], pair["slm"]["entropy"]) == ("topk", "exact")
    # tables of different entropy kinds do not mix
    man = json.loads((tables["train"] / "manifest.json").read_text())
    man["entropy"] = {"llm": "topk", "slm": "topk"}
    (tables["train"] / "manifest.json").write_text(json.dumps(man))
    try:
        with pytest.raises(ConfigError, match="entropies"):
            load_tables([tables["calib"], tables["train"]])
    finally:
        del man["entropy"]
        (tables["train"] / "manifest.json").write_text(json.dumps(man))


def test_feature_groups_select_columns() -> None:
    assert parse_groups("llm_stream, progress") == ["llm_stream", "progress"]
    assert parse_groups(None) == list(FEATURE_GROUPS) == parse_groups("all")
    with pytest.raises(ConfigError, match="unknown feature group"):
        parse_groups("llm_stream,vibes")


def test_error_records_are_skipped_and_counted(tmp_path: Path) -> None:
    d = make_table(tmp_path / "err", 0, 3, llm_fail_after=3)
    (t,) = load_tables([d])
    assert t.errors == 3 and t.records == [] and t.describe()["errors"] == 3


def test_test_split_tables_are_refused(tmp_path: Path) -> None:
    d = make_table(tmp_path / "t", 0, 2, split="test")
    with pytest.raises(ConfigError, match="test split"):
        load_tables([d])
    assert load_tables([d], allow_test_split=True)


@pytest.mark.parametrize("kind", ["logistic", "gbdt"])
def test_fit_finds_the_signal(tables: dict[str, Path], tmp_path: Path, kind: str) -> None:
    tune = kind == "logistic"  # the search is the same code for both kinds; the trees' grid is slower
    res = fit([tables["train"]], tmp_path / "m.json", kind=kind, tune=tune)
    assert res.cv["folds"] == 5
    assert res.cv["roc_auc"] > 0.8
    assert res.plot is not None and res.plot.stat().st_size > 1000
    doc = json.loads(res.path.read_text())
    assert doc["training"]["problems"] == 42 and doc["training"]["rows"] == len(res.rows)
    assert doc["models"]["llm"]["name"] == "big" and doc["calibration"] is None
    # held out: the classifier ranks the calibration table's rows too
    from sklearn.metrics import roc_auc_score

    rows = build_rows(load_tables([tables["calib"]]))
    assert roc_auc_score(rows.y, load_classifier(res.path).predict_proba(rows.X)) > 0.8
    tuning = doc["cv"]["tuning"]
    if not tune:
        assert tuning is None and all(f["hyperparameters"] == {} for f in doc["cv"]["per_fold"])
        return
    # nested: every outer fold chose from the grid on its own rows; the final choice is the best on all rows
    grid = tuning["grid"]
    assert len(tuning["scores"]) == len(grid) and all(f["hyperparameters"]["C"] in [g["C"] for g in grid]
                                                      for f in doc["cv"]["per_fold"])
    assert doc["training"]["hyperparameters"]["C"] == grid[int(np.argmin(tuning["scores"]))]["C"]


def test_fit_on_a_feature_subset(tables: dict[str, Path], tmp_path: Path) -> None:
    res = fit([tables["train"]], tmp_path / "m.json", kind="logistic", feature_groups="llm_stream,progress",
              tune=False)
    clf = load_classifier(res.path)
    assert clf.feature_groups == ["llm_stream", "progress"] and not clf.uses_shadow


def test_fewer_problems_than_folds(tmp_path: Path) -> None:
    d = make_table(tmp_path / "small", 0, 3)
    res = fit([d], tmp_path / "m.json", kind="logistic", tune=False)
    assert res.cv["folds"] == 3


def replayed(clf, tables_dir: Path, method: str) -> tuple[float, float]:
    """Accuracy and relative total FLOPs of a method, replayed independently of the calibration code."""
    recs = [r for r in read_records(tables_dir) if "error" not in r]
    rule = clf.stop_rule()
    outs = []
    for r in recs:
        if method == "route":
            from tandem.bench.replay import replay_route

            outs.append(replay_route(r, P, clf, clf.route_threshold))
        elif method == "cascade":
            outs.append(replay(r, f"cascade:{clf.cascade_threshold}", P))
        else:
            outs.append(replay(r, method, P, policy=clf, rule=rule))
    llm = np.mean([replay(r, "llm", P).flops_total for r in recs])
    return float(np.mean([o.correct for o in outs])), float(np.mean([o.flops_total for o in outs]) / llm)


def test_calibrate_lambda_maximises_the_objective(model: Path, tables: dict[str, Path]) -> None:
    objs, shared = objectives_from_options("all", "lambda")
    assert {e: o.value for e, o in objs.items()} == DEFAULT_LAMBDAS
    new, res = calibrate(load_classifier(model), load_tables([tables["calib"]]), objs, route=shared,
                         cascade=shared)
    for effort, obj in objs.items():
        acc, rel = replayed(new, tables["calib"], f"tandem:{effort}")
        chosen = res.chosen[effort].point
        assert (acc, rel) == pytest.approx((chosen.accuracy, chosen.relative_cost))
        best = max(p.accuracy - obj.value * p.relative_cost for p in res.tandem_points)
        before = res.global_points[effort]
        assert before.accuracy - obj.value * before.relative_cost == pytest.approx(best)
        assert acc - obj.value * rel >= best - 1e-9  # the per-stage search never makes it worse
        entry = getattr(new.spec.calibration, effort)
        assert entry.objective.kind == "lambda" and entry.split == "synthetic/train[100:142]"
    # route and cascade: replayed at the stored thresholds, each the best of its own grid
    for key, points in (("route", res.route_points), ("cascade", res.cascade_points)):
        acc, rel = replayed(new, tables["calib"], key)
        assert acc - shared.value * rel == pytest.approx(max(p.accuracy - shared.value * p.relative_cost
                                                             for p in points))
    costs = [res.chosen[e].point.relative_cost for e in ("low", "medium", "high")]
    assert costs == sorted(costs)


def test_calibrate_target_and_budget(model: Path, tables: dict[str, Path]) -> None:
    clf, calib = load_classifier(model), load_tables([tables["calib"]])
    new, res = calibrate(clf, calib, {"medium": Objective("target", 0.5)})
    acc, rel = replayed(new, tables["calib"], "tandem:medium")
    assert acc >= 0.5 and res.chosen["medium"].satisfied
    assert rel <= min(p.relative_cost for p in res.tandem_points if p.accuracy >= 0.5) + 1e-9
    assert new.spec.efforts["low"] == clf.spec.efforts["low"]  # the other efforts are left alone
    new, res = calibrate(clf, calib, {"low": Objective("budget", 0.4)})
    acc, rel = replayed(new, tables["calib"], "tandem:low")
    assert rel <= 0.4 and acc >= max(p.accuracy for p in res.tandem_points if p.relative_cost <= 0.4) - 1e-9
    # an unreachable target is recorded as unsatisfied, never passed off as met (only the LLM finishing
    # its own answers reaches 100% here)
    new, res = calibrate(clf, calib, {"high": Objective("target", 1.0)}, finish=False)
    assert not res.chosen["high"].satisfied and new.spec.calibration.high.satisfied is False


def test_calibrate_gap_to_the_llm_alone(model: Path, tables: dict[str, Path]) -> None:
    clf, calib = load_classifier(model), load_tables([tables["calib"]])
    new, res = calibrate(clf, calib, {"medium": Objective("gap", 0.02), "low": Objective("gap", 0.05)})
    target = res.table.llm_accuracy - 0.02
    acc, rel = replayed(new, tables["calib"], "tandem:medium")
    assert acc >= target - 1e-9 and res.chosen["medium"].satisfied
    assert rel <= min(p.relative_cost for p in res.tandem_points if p.accuracy >= target - 1e-9) + 1e-9
    assert new.spec.calibration.medium.objective.llm_accuracy == res.table.llm_accuracy
    objs, _ = objectives_from_options("all", "gap", gap="0.05,0.02,0.02")
    assert [o.value for o in objs.values()] == [0.05, 0.02, 0.02]
    with pytest.raises(ConfigError, match="fraction in"):
        objectives_from_options("medium", "gap", gap="2")


def _paired(threshold: float, budget: int, wins: int, losses: int, cost: float, n: int = 100) -> Point:
    """A point paired with an LLM alone that is right on 90 of `n` problems."""
    both = 90 - losses
    return Point(threshold, budget, (both + wins) / n, cost, both=both, wins=wins, losses=losses,
                 neither=n - both - wins - losses)


def test_certified_choice_tests_fixed_sequences_from_the_cautious_end() -> None:
    obj = Objective("gap", 0.02, confidence=0.8)
    cautious = _paired(NEVER, 64, 0, 0, 1.0)
    # at budget 32: the cautious thresholds win problems back, the next loses many, a later one looks
    # fine again - the sequence stops at its first failure, so the later lucky point is never taken
    seq32 = [_paired(NEVER, 32, 6, 0, 0.9), _paired(0.8, 32, 6, 0, 0.7), _paired(0.6, 32, 0, 12, 0.5),
             _paired(0.4, 32, 6, 0, 0.3)]
    chosen, ok = choose_certified(seq32, obj, sequence=lambda p: p.budget, cautious=cautious)
    assert ok and (chosen.threshold, chosen.relative_cost) == (0.8, 0.7)
    # the point estimate alone takes the lucky point
    assert Objective("gap", 0.02).on(0.9).choose(seq32)[0].threshold == 0.4
    # a point within the gap by its estimate but not by its bound is not certified: the cautious one
    loose = [_paired(NEVER, 32, 0, 1, 0.4)]
    assert loose[0].accuracy >= 0.9 - 0.02
    assert choose_certified(loose, obj, sequence=lambda p: p.budget, cautious=cautious) == (cautious, False)
    # more sequences split the level: a point that passes alone can fail beside 20 other sequences
    alone = [_paired(NEVER, 32, 2, 0, 0.5)]
    others = [_paired(NEVER, 100 + i, 0, 30, 0.1) for i in range(20)]
    level = 1 - 0.2 / 21
    assert alone[0].difference_bound(0.8) >= -0.02 > alone[0].difference_bound(level)
    assert choose_certified(alone, obj, sequence=lambda p: p.budget, cautious=cautious)[1]
    assert not choose_certified(alone + others, obj, sequence=lambda p: p.budget, cautious=cautious)[1]
    # in one sequence from the dearest point down, the level is not split: the cheap losers come after
    by_cost = Objective("gap", 0.02, confidence=0.8, order="cost")
    assert choose_certified(alone + others, by_cost, sequence=lambda p: p.budget, cautious=cautious)[0] == alone[0]
    # ... and the sequence stops at its first failure, however cheap the points after it
    dear_loser = _paired(NEVER, 64, 0, 30, 0.95)
    assert choose_certified([dear_loser, *alone], by_cost, sequence=lambda p: p.budget,
                            cautious=cautious) == (cautious, False)
    with pytest.raises(ConfigError, match="needs a confidence"):
        Objective("gap", 0.02, order="cost")
    with pytest.raises(ConfigError, match="needs --confidence"):
        objectives_from_options("all", "gap", gap="0.05,0.02,0.02", order="cost")


def test_confidence_objective_is_checked_and_recorded(model: Path, tables: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gap only"):
        objectives_from_options("all", "lambda", confidence=0.9)
    with pytest.raises(ConfigError, match="one-sided level"):
        objectives_from_options("all", "gap", gap="0.05,0.02,0.02", confidence=1.2)
    objs, shared = objectives_from_options("all", "gap", gap="0.05,0.02,0.02", confidence=0.9)
    assert {o.confidence for o in objs.values()} == {0.9}
    clf, calib = load_classifier(model), load_tables([tables["calib"]])
    new, res = calibrate(clf, calib, objs, route=shared, cascade=shared)
    for key in ("low", "medium", "high", "route", "cascade"):
        entry = getattr(new.spec.calibration, key)
        assert entry.objective.confidence == 0.9 and entry.satisfied == res.chosen[key].satisfied
        p = res.chosen[key].point
        assert (entry.paired.wins, entry.paired.losses) == (p.wins, p.losses)
        assert p.both + p.wins == round(p.accuracy * res.table.n)  # the counts pair the same problems
    # the file reads back; an unset confidence is not written (older files read as they did)
    assert load_classifier(new.save(tmp_path / "c.json")).spec.calibration.medium.objective.confidence == 0.9
    plain, _ = calibrate(clf, calib, {"medium": Objective("gap", 0.02)})
    assert "confidence" not in json.dumps(plain.to_dict()["calibration"]["medium"]["objective"])
    # from the command line
    from tandem.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.json"
    res_cli = runner.invoke(app, ["train", "calibrate", str(model), str(tables["calib"]), "--objective", "gap",
                                  "--accuracy-gap", "0.05,0.02,0.02", "--confidence", "0.9", "--out", str(out)])
    assert res_cli.exit_code == 0, res_cli.output
    assert load_classifier(out).spec.calibration.low.objective.confidence == 0.9
    res_cli = runner.invoke(app, ["train", "calibrate", str(model), str(tables["calib"]), "--confidence", "0.9",
                                  "--out", str(out)])
    assert isinstance(res_cli.exception, ConfigError) and "gap only" in str(res_cli.exception)


def test_objective_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs --target-accuracy"):
        objectives_from_options("all", "target")
    with pytest.raises(ConfigError, match="give 3 value"):
        objectives_from_options("all", "budget", budget="0.5")
    with pytest.raises(ConfigError, match="does not apply"):
        objectives_from_options("medium", "lambda", target="0.5")
    with pytest.raises(ConfigError, match="fraction"):
        objectives_from_options("medium", "target", target="70")
    objs, shared = objectives_from_options("high", "budget", budget="0.8")
    assert list(objs) == ["high"] and shared == Objective("budget", 0.8)


def test_replay_default_methods_use_the_calibrated_route_and_cascade(model: Path, tables: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    objs, shared = objectives_from_options("all", "lambda")
    new, _ = calibrate(load_classifier(model), load_tables([tables["calib"]]), objs, route=shared, cascade=shared)
    path = new.save(tmp_path / "cal.json")
    assert default_methods([32], True, cascade=True)[-1] == "cascade"
    outcomes, _, notes = replay_dirs([tables["calib"]], None, path)
    methods = {o.method for o in outcomes}
    assert {"route", "cascade", "tandem:low", "tandem:medium", "tandem:high"} <= methods
    acc = np.mean([o.correct for o in outcomes if o.method == "route"])
    assert acc == pytest.approx(replayed(new, tables["calib"], "route")[0])
    assert any("calibrated route threshold" in n for n in notes)


def test_train_commands_end_to_end(tables: dict[str, Path], tmp_path: Path) -> None:
    from tandem.cli import app

    runner = CliRunner()
    m = tmp_path / "m.json"
    res = runner.invoke(app, ["train", "fit", str(tables["train"]), "--out", str(m), "--kind", "logistic",
                              "--feature-groups", "llm_stream,progress", "--folds", "4"])
    assert res.exit_code == 0, res.output
    assert "CV ROC-AUC" in res.output and (tmp_path / "m.reliability.png").exists()
    res = runner.invoke(app, ["train", "calibrate", str(m), str(tables["calib"]), "--out", str(m),
                              "--objective", "budget", "--flops-budget", "0.3,0.5,0.8"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.tradeoff.png").stat().st_size > 1000
    assert (tmp_path / "m.tradeoff.cascade.png").exists()
    doc = json.loads(m.read_text())
    assert doc["calibration"]["medium"]["objective"] == {"kind": "budget", "value": 0.5, "cost": "flops_total"}
    assert doc["route"] is not None and doc["cascade"] is not None
    res = runner.invoke(app, ["train", "show", str(m)])
    assert res.exit_code == 0 and "budget 0.5" in res.output
    doc["efforts"]["medium"].update(threshold=1.01, stage_thresholds={}, finish=True)
    m.write_text(json.dumps(doc))
    from tandem.train import commands

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commands.out, "_width", 250)  # one line per row
        res = runner.invoke(app, ["train", "show", str(m)])
    medium = next(line for line in res.output.splitlines() if "medium" in line)
    assert res.exit_code == 0 and "LLM alone" in medium and "LLM alone" not in next(
        line for line in res.output.splitlines() if line.strip("│ ").startswith("low"))
    res = runner.invoke(app, ["replay", str(tables["calib"]), "--classifier", str(m), "--out",
                              str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    for method in ("`route`", "`cascade`", "`tandem:low`", "`tandem:medium`", "`tandem:high`", "`oracle`"):
        assert method in md
    # the training table is no calibration table
    res = runner.invoke(app, ["train", "calibrate", str(m), str(tables["train"]), "--out", str(tmp_path / "x.json")])
    assert isinstance(res.exception, ConfigError) and "held-out" in str(res.exception)
    res = runner.invoke(app, ["train", "fit", str(tables["train"]), "--out", str(m), "--kind", "gbdt", "--c", "2"])
    assert isinstance(res.exception, ConfigError)


class _StageTable:
    """A stand-in calibration table whose accuracy and cost are known functions of the stage thresholds:
    best with stage 1 at 0.3 (cheap hand-overs there) and stage 2 never early."""

    budgets = [32, 64]

    def n_stages(self, budget: int) -> int:
        return 2

    def stage_probabilities(self, stage: int) -> np.ndarray:
        return np.linspace(0.0, 1.0, 11)

    def tandem(self, budget: int, threshold: float, stage_thresholds=None, finish: bool = False) -> Point:
        st = dict(stage_thresholds or {})
        t1, t2 = st.get(1, threshold), st.get(2, threshold)
        acc = 0.8 - abs(t1 - 0.3) * 0.2 - (0.1 if t2 < 1.0 else 0.0)
        cost = 0.5 + 0.3 * t1
        return Point(threshold, budget, acc, cost, tuple(sorted(st.items())))


def test_per_stage_search_finds_better_stage_thresholds_and_never_worse() -> None:
    table = _StageTable()
    obj = Objective("lambda", 0.2)
    start = table.tandem(64, 0.7)
    best = refine_per_stage(table, start, obj)  # type: ignore[arg-type]
    assert dict(best.stage_thresholds).get(1) == pytest.approx(0.3, abs=0.05)  # the grid point nearest 0.3
    assert dict(best.stage_thresholds).get(2, best.threshold) >= 1.0
    assert obj.value_of(best) > obj.value_of(start)
    # already optimal: nothing changes
    assert refine_per_stage(table, best, obj) == best  # type: ignore[arg-type]


def test_calibrate_can_let_the_llm_finish(model: Path, tables: dict[str, Path], tmp_path: Path) -> None:
    clf, calib = load_classifier(model), load_tables([tables["calib"]])
    obj = {"high": Objective("lambda", 0.01)}  # accuracy first: the LLM alone is always right here
    without, res0 = calibrate(clf, calib, obj, finish=False, per_stage=False)
    new, res = calibrate(clf, calib, obj, per_stage=False)
    assert not any(p.finish for p in res0.tandem_points) and any(p.finish for p in res.tandem_points)
    chosen, before = res.chosen["high"].point, res0.chosen["high"].point
    assert obj["high"].value_of(chosen) > obj["high"].value_of(before)  # the tricky problems go to the LLM
    assert chosen.finish and new.spec.efforts["high"].finish and new.spec.calibration.high.finish
    assert chosen.accuracy > before.accuracy
    # the file's stop rule replays to the chosen point, and survives a save and load
    path = new.save(tmp_path / "finish.json")
    assert load_classifier(path).stop_rule().setting("high").finish
    assert replayed(load_classifier(path), tables["calib"], "tandem:high") == pytest.approx(
        (chosen.accuracy, chosen.relative_cost))


def test_score_measures_a_classifier_on_held_out_tables(model: Path, tables: dict[str, Path],
                                                        tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from tandem.cli import app
    from tandem.train.score import score

    res = score(model, [tables["calib"]], plot=tmp_path / "rel.png")
    rows = build_rows(load_tables([tables["calib"]]))
    clf = load_classifier(model)
    p = clf.predict_proba(rows.X)
    m = res.metrics
    assert m["rows"] == len(rows) and m["problems"] == 42
    assert m["roc_auc"] == pytest.approx(roc_auc_score(rows.y, p)) and m["roc_auc"] > 0.8
    assert m["tables"][0]["dataset"] == load_tables([tables["calib"]])[0].split
    assert sum(s["rows"] for s in m["by_stage"]) == len(rows) and (tmp_path / "rel.png").stat().st_size > 1000
    # a test-split table is accepted (nothing is fitted), and the CLI writes the same metrics
    test_dir = make_table(tmp_path / "test", 200, 230, split="test")
    out = tmp_path / "score.json"
    res2 = CliRunner().invoke(app, ["train", "score", str(model), str(test_dir), "--out", str(out)])
    assert res2.exit_code == 0, res2.output
    assert "ROC-AUC" in res2.output and json.loads(out.read_text())["problems"] == 30
