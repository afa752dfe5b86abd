"""`tandem eval --samples K`: K samples per problem with seeds seed + i, stored apart (one-sample runs keep
their keys), and reported as mean accuracy with its interval, pass@k and the majority vote."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tandem.backends.scripted import ScriptedBackend
from tandem.bench.graders import get_grader
from tandem.bench.records import Outcome
from tandem.bench.report import (
    clustered_interval,
    majority_correct,
    pass_at_k,
    render_markdown,
    summarize,
    wilson_interval,
)
from tandem.bench.runner import run_live, sample_key
from tandem.bench.store import RunStore, read_manifest, read_records
from tandem.pipeline import DecodingSettings, PipelineConfig, Tandem
from tandem.types import GenerationRequest, Problem, TokenStream

PROBLEMS = [Problem("a", "What is 3 + 4?", "7"), Problem("b", "What is 2 + 2?", "4")]


class Seeded(ScriptedBackend):
    """Answers by the request's seed: seed s gives `replies[s % len(replies)]`."""

    def __init__(self, replies: list[str], **kw: Any) -> None:
        super().__init__(replies[0], **kw)
        self.replies = replies
        self.seeds: list[int] = []

    def stream(self, request: GenerationRequest) -> TokenStream:
        self.seeds.append(request.seed)
        self._reply = self.replies[request.seed % len(self.replies)]
        return super().stream(request)


def _tandem(seed: int = 10, temperature: float = 0.7) -> Tandem:
    slm = Seeded(["The answer is \\boxed{7}.", "The answer is \\boxed{4}.", "The answer is \\boxed{9}."], name="slm")
    cfg = PipelineConfig(decoding=DecodingSettings(temperature=temperature, seed=seed))
    return Tandem(ScriptedBackend("\\boxed{7}", name="llm"), slm, config=cfg)


def _run(tmp_path: Path, samples: int, **kw: Any) -> tuple[Tandem, list[dict[str, Any]], int]:
    t = kw.pop("tandem", None) or _tandem()
    n = run_live(PROBLEMS, t, ["slm"], get_grader("gsm8k"), RunStore(tmp_path), dataset="t", grader_name="gsm8k",
                 samples=samples, **kw)
    return t, list(read_records(tmp_path)), n


def test_samples_run_with_seed_plus_i_under_keys_of_their_own(tmp_path: Path) -> None:
    t, recs, n = _run(tmp_path, 3)
    assert n == 6 and [r["key"] for r in recs] == [sample_key(p, "slm", i, 3) for p in "ab" for i in range(3)]
    assert recs[0]["key"] == "a|slm|s0"
    assert [(r["extra"]["sample"], r["extra"]["seed"]) for r in recs[:3]] == [(0, 10), (1, 11), (2, 12)]
    assert t.slm.seeds == [10, 11, 12, 10, 11, 12]  # type: ignore[attr-defined]
    assert [r["answer"] for r in recs[:3]] == ["4", "9", "7"]  # seeds 10, 11, 12 of three replies
    assert read_manifest(tmp_path)["samples"] == 3
    assert _run(tmp_path, 3)[2] == 0  # resumed: nothing to do


def test_one_sample_keeps_the_keys_and_manifest_of_runs_recorded_before(tmp_path: Path) -> None:
    t, recs, _ = _run(tmp_path, 1)
    assert [r["key"] for r in recs] == ["a|slm", "b|slm"] and "sample" not in recs[0]["extra"]
    assert "samples" not in read_manifest(tmp_path)
    assert t.slm.seeds == [10, 10]  # type: ignore[attr-defined]
    from tandem.errors import ConfigError

    with pytest.raises(ConfigError, match="samples"):  # another number of samples is another run
        _run(tmp_path, 2)


def test_greedy_samples_are_pointed_out(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    _run(tmp_path, 2, tandem=_tandem(temperature=0.0), console=console)
    assert "LLM and the SLM decode(s) greedily" in console.export_text()


# ---- statistics ------------------------------------------------------------------------------------------
def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n, c in [(5, 0), (5, 2), (5, 5), (6, 1), (4, 3)]:
        for k in range(1, n + 1):
            subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def _out(pid: str, i: int, correct: bool, answer: str | None = "x", method: str = "m", **kw: Any) -> Outcome:
    return Outcome(pid, method, correct=correct, answer=answer, extra={"sample": i}, **kw)


def test_majority_vote_counts_answers_and_breaks_ties_by_the_first() -> None:
    assert majority_correct([_out("p", 0, False, "3"), _out("p", 1, True, "7"), _out("p", 2, True, "7")])
    assert not majority_correct([_out("p", 0, False, "3"), _out("p", 1, True, "7")])  # tie: the first
    assert majority_correct([_out("p", 1, True, "7"), _out("p", 0, False, "3", error="E"), _out("p", 2, False, "3")])
    assert not majority_correct([_out("p", 0, False, None), _out("p", 1, False, None), _out("p", 2, True, "7")])


def test_the_interval_of_sampled_accuracy_accounts_for_problems() -> None:
    # ten problems, each all right or all wrong over 4 samples: no more information than 10 samples
    rows = [(4, 4)] * 6 + [(0, 4)] * 4
    assert clustered_interval(rows) == pytest.approx(wilson_interval(6, 10))
    # independent-looking samples: close to the interval of 40 samples
    mixed = [(2, 4)] * 5 + [(3, 4)] * 5
    lo, hi = clustered_interval(mixed)
    w_lo, w_hi = wilson_interval(25, 40)
    assert lo >= w_lo - 1e-9 and hi <= w_hi + 1e-9 and lo < 0.625 < hi


def test_summary_of_samples() -> None:
    outs = [_out("a", i, c, a, flops_total=f) for i, (c, a, f) in enumerate([(True, "7", 1.0), (True, "7", 3.0),
                                                                              (False, "9", 2.0)])]
    outs += [_out("b", i, c, a, flops_total=2.0) for i, (c, a) in enumerate([(False, "1", ), (True, "4"),
                                                                             (False, "1")])]
    outs += [Outcome("a", "llm", correct=True, flops_total=4.0), Outcome("b", "llm", correct=False, flops_total=4.0)]
    s = {x.method: x for x in summarize(outs)}
    m = s["m"]
    assert m.samples == 3 and m.n == 6 and m.accuracy == pytest.approx(3 / 6)
    assert m.pass_at == pytest.approx({"1": 0.5, "2": (1.0 + 2 / 3) / 2, "3": 1.0})
    assert m.majority_accuracy == 0.5  # a: 7 (right); b: 1 (wrong)
    assert m.flops_ratio == pytest.approx((2.0 + 2.0) / 8.0)  # per-problem means against the baseline's
    assert m.mcnemar_p is None and s["llm"].samples == 1 and s["llm"].pass_at is None
    md = render_markdown(list(s.values()), "t")
    assert "| pass@k |" in md and "@1 50.0%, @2 83.3%, @3 100.0%" in md and "majority vote" in md
    assert "pass@k" not in render_markdown([s["llm"]], "t")  # one sample: the report as before


def test_cli_eval_samples_reports_pass_at_k(tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n"
                            for p in PROBLEMS))
    cfg = tmp_path / "s.toml"
    cfg.write_text('[llm]\nkind = "scripted"\nmodel = "big"\nreply = "\\\\boxed{7}"\n'
                   '[slm]\nkind = "scripted"\nmodel = "small"\nreply = "\\\\boxed{7}"\n'
                   "[pipeline]\ntemperature = 0.5\n")
    env = {**os.environ}
    run = subprocess.run([sys.executable, "-m", "tandem.cli", "eval", str(data), "--config", str(cfg), "--methods",
                          "slm,llm", "--samples", "2", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert sorted(r["key"] for r in read_records(tmp_path / "run"))[:2] == ["a|llm|s0", "a|llm|s1"]
    rep = subprocess.run([sys.executable, "-m", "tandem.cli", "report", str(tmp_path / "run"), "--out",
                          str(tmp_path / "rep")], capture_output=True, text=True, timeout=120, env=env)
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "@1 50.0%, @2 50.0%" in md  # the SLM: right on a, wrong on b, both samples
