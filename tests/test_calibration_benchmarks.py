"""The calibration benchmarks (benchmarks/calibration_stability.py, handover_breakdown.py) on synthetic
probe tables: they run, and their figures add up to what replay and calibration give."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

import pytest

from synthetic import make_table
from tandem.bench.replay_run import replay_dirs
from tandem.train.data import load_tables
from tandem.train.fit import fit

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probes")
    train, calib = make_table(root / "train", 0, 42), make_table(root / "calib", 100, 142)
    return fit([train], root / "m.json", kind="logistic").path, calib


def test_handover_breakdown_adds_up_to_the_replay(pair: tuple[Path, Path], tmp_path: Path) -> None:
    clf, calib = pair
    out = tmp_path / "b.json"
    assert _load("handover_breakdown").main([str(clf), str(calib), "--method", "tandem:low",
                                             "--json-out", str(out)]) == 0
    groups = json.loads(out.read_text())["groups"]
    outcomes, _, _ = replay_dirs([calib], "llm,tandem:low", clf)
    low = [o for o in outcomes if o.method == "tandem:low"]
    llm = [o for o in outcomes if o.method == "llm"]
    assert sum(g["problems"] for g in groups) == len(low) == 42
    assert sum(g["right"] for g in groups) == sum(o.correct for o in low)
    assert sum(g["llm_right"] for g in groups) == sum(o.correct for o in llm)
    at_zero = [g for g in groups if g["where"].startswith("checkpoint 0")]
    assert sum(g["problems"] for g in at_zero) == sum(o.handover_tokens == 0 for o in low)


def test_calibration_stability_reports_promise_and_held_out(pair: tuple[Path, Path], tmp_path: Path) -> None:
    clf, calib = pair
    mod = _load("calibration_stability")
    plain, certified = tmp_path / "p.json", tmp_path / "c.json"
    assert mod.main([str(clf), str(calib), "--splits", "3", "--json-out", str(plain)]) == 0
    assert mod.main([str(clf), str(calib), "--splits", "3", "--confidence", "0.9", "--certify-order", "cost",
                     "--fit-share", "0.8", "--json-out", str(certified)]) == 0
    p, c = json.loads(plain.read_text()), json.loads(certified.read_text())
    assert p["problems"] == c["problems"] == 42 and p["confidence"] is None and c["confidence"] == 0.9
    assert (p["fit_share"], c["fit_share"], c["certify_order"]) == (0.5, 0.8, "cost")
    with pytest.raises(SystemExit):
        mod.main([str(clf), str(calib), "--fit-share", "1.5"])
    first, second = mod.halves(load_tables([calib]), random.Random(0), 0.8)
    assert (len(first[0].records), len(second[0].records)) == (34, 8)  # 0.8 of 42, rounded
    for effort in ("low", "medium", "high"):
        for summary in (p["efforts"][effort], c["efforts"][effort]):
            assert summary["splits"] == 3
            assert 0.0 <= summary["held_out_within_gap_share"] <= 1.0
            assert summary["held_out_gap_min"] <= summary["held_out_gap_mean"] <= summary["held_out_gap_max"]
