"""The recorded backend from the command line: checking a recordings file, and probing and evaluating
only the problems that have a recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

QS = [("r1", "Tom has 3 apples and buys 4 more. How many apples does he have?", "7"),
      ("r2", "A box holds 6 eggs. How many eggs are in 5 boxes?", "30"),
      ("r3", "Sara reads 12 pages a day. How many pages in a week?", "84")]
OUT = " ".join(f"step{i} counting." for i in range(30)) + "</think>\n\nThe answer is \\boxed{7}."


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tandem.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in QS))
    rec = tmp_path / "rec.jsonl"  # r1 and r2 recorded, r3 not
    rec.write_text("".join(json.dumps({"id": i, "question": q, "output": OUT, "model": "Org/QwQ-mini",
                                       "params_total": 32_000_000_000}) + "\n" for i, q, _ in QS[:2]))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[llm]\ntokenizer = "words"\n[slm]\nkind = "scripted"\nmodel = "small"\n'
                   'reply = "So \\\\boxed{7}."\n')
    return {"bench": bench, "rec": rec, "cfg": cfg}


def test_recordings_check(files: dict[str, Path], tmp_path: Path) -> None:
    r = run("recordings", "check", str(files["rec"]), "--tokenizer", "words", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] == 2 and summary["model"] == "Org/QwQ-mini" and summary["finished_thinking"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "output": "x"}\n{"question": "q", "output": "y"}\n')
    r = run("recordings", "check", str(bad), "--tokenizer", "none")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.jsonl:2: the same question as line 1" in r.stderr


def test_probe_and_eval_take_only_recorded_problems(files: dict[str, Path], tmp_path: Path) -> None:
    r = run("probe", str(files["bench"]), "--llm-recording", str(files["rec"]), "-c", str(files["cfg"]),
            "--budgets", "8,16", "--slm-max-tokens", "16", "--trial-tokens", "4", "--out", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    assert "2 of 3 selected problems have a recording" in r.stderr
    recs = [json.loads(x) for x in (tmp_path / "p" / "records.jsonl").read_text().splitlines()]
    assert [x["problem_id"] for x in recs] == ["r1", "r2"] and all(x["llm"]["text"] is None for x in recs)
    man = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert man["llm"]["name"] == "Org/QwQ-mini" and len(man["llm"]["checksum"]) == 64
    r = run("eval", str(files["bench"]), "--llm-recording", str(files["rec"]), "-c", str(files["cfg"]),
            "--methods", "llm,afterthink,fixed:8", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    outs = [json.loads(x) for x in (tmp_path / "e" / "records.jsonl").read_text().splitlines()]
    assert len(outs) == 6 and all(o["error"] is None for o in outs)
    assert [o["correct"] for o in outs] == [True] * 3 + [False] * 3  # both models say 7; r2's gold is 30
    assert all(o["extra"]["llm_text"] is None for o in outs if o["method"] != "slm")  # no recorded text kept
    other = tmp_path / "rec2.jsonl"  # another recordings file: the probe run refuses to resume with it
    other.write_text(files["rec"].read_text().replace("step0", "stepzero"))
    r = run("probe", str(files["bench"]), "--llm-recording", str(other), "-c", str(files["cfg"]),
            "--budgets", "8,16", "--slm-max-tokens", "16", "--trial-tokens", "4", "--out", str(tmp_path / "p"))
    assert r.returncode == 2 and "llm" in r.stderr and "another manifest" in r.stderr
