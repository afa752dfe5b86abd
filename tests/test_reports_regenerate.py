"""The committed reports under results/ regenerate from the committed run stores (scripts/check_reports.py):
a change that moves a decision or a price anywhere in replay, calibration or reporting shows up here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_reports", ROOT / "scripts" / "check_reports.py")
assert spec is not None and spec.loader is not None
check_reports = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_reports)


def test_every_committed_report_is_covered() -> None:
    written = {p.parent.relative_to(ROOT).as_posix() for name in ("report.md", "agreement.md")
               for p in (ROOT / "results").rglob(name)}
    assert written == {d for d, _ in check_reports.REPORTS.values()}


def test_json_comparison_names_what_moved() -> None:
    old = {"methods": [{"accuracy": 0.5, "n": 10}], "title": "t"}
    assert check_reports.json_differences(old, {**old, "samples": 1}) == []  # a key added later, as before
    moved = check_reports.json_differences(old, {"methods": [{"accuracy": 0.6, "n": 10}], "title": "t"})
    assert moved == [".methods[0].accuracy: 0.5 -> 0.6"]
    assert check_reports.json_differences(old, {"methods": [], "title": "t", "x": 2}) == [
        ".x: new", ".methods: 1 items, now 0"]


@pytest.mark.parametrize("name", sorted(check_reports.REPORTS))
def test_report_regenerates_from_the_committed_stores(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert check_reports.check(name, tmp_path) == []
    committed = ROOT / check_reports.REPORTS[name][0]
    for data in ("summary.json", "agreement.json"):
        if (committed / data).exists():  # a real comparison: the regenerated file was read
            assert json.loads((tmp_path / name / data).read_text())


def test_every_committed_probe_store_loads_as_typed_records() -> None:
    from tandem.bench.replay_run import load_probe
    from tandem.bench.store import read_manifest

    dirs = [m.parent for m in (ROOT / "results").rglob("manifest.json") if read_manifest(m.parent).get("kind") == "probe"]
    assert len(dirs) >= 10
    for d in dirs:
        _, recs = load_probe(d)
        assert recs and all("error" in r or r["checkpoints"] is not None for r in recs), d
