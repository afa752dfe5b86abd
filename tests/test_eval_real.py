"""`tandem eval` and `tandem report` end to end on real models: SmolLM2-135M in both roles through
llama.cpp, 3 GSM8K problems and 2 HumanEval tasks (graded by running their tests in the sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.bench.store import read_records
from tandem.cli import app

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_eval_and_report_on_gsm8k_and_humaneval_with_a_real_pair(smol_path: Path, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    cfg = tmp_path / "smol.toml"
    model = json.dumps(str(smol_path))
    cfg.write_text(f"[llm]\nmodel = {model}\nn_ctx = 2048\nn_threads = 2\n"
                   f"[slm]\nmodel = {model}\nn_ctx = 2048\nn_threads = 2\n"
                   "[pipeline]\nstage_budgets = [16, 32]\nllm_max_tokens = 64\nslm_max_tokens = 64\n")
    runner = CliRunner()
    runs = {"gsm8k": (["--split", "test", "--limit", "3", "--data-dir", str(data_dir)], 3),
            "humaneval": (["--limit", "2"], 2)}
    for bench, (args, n) in runs.items():
        out = tmp_path / bench
        res = runner.invoke(app, ["eval", bench, *args, "--config", str(cfg), "--methods", "slm,llm,fixed:16,tandem",
                                  "--out", str(out)])
        assert res.exit_code == 0, res.output
        recs = list(read_records(out))
        assert len(recs) == 4 * n and len({r["key"] for r in recs}) == 4 * n
        for r in recs:
            assert r["error"] is None, r["error"]
            assert r["flops_total"] > 0 and r["wall_seconds"] > 0 and r["extra"]["text"]
            assert r["grade_reason"]  # graded for real: the rule that fired, or why the tests failed
        fixed = [r for r in recs if r["method"] == "fixed:16"]
        assert all(r["handover_tokens"] is not None and r["handover_tokens"] >= 16 for r in fixed if
                   r["llm_generated_tokens"] >= 16)
        man = json.loads((out / "manifest.json").read_text())
        assert man["llm"]["checksum"] and man["grader"] == ("gsm8k" if bench == "gsm8k" else "humaneval")
        res = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / f"report-{bench}")])
        assert res.exit_code == 0, res.output
        md = (tmp_path / f"report-{bench}" / "report.md").read_text()
        for m in ("`slm`", "`llm`", "`fixed:16`", "`tandem`"):
            assert f"| {m} |" in md
        assert (tmp_path / f"report-{bench}" / "pareto.png").stat().st_size > 1000
