"""Probe tables, replay, run stores and the runner, on scripted backends (fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem import ConfigError, PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.bench.graders import get_grader
from tandem.bench.probe import ProbeConfig, Prober
from tandem.bench.replay import PairParams, replay
from tandem.bench.runner import run_live, run_probe
from tandem.bench.store import RunStore, pack, read_records
from tandem.errors import InputError
from tandem.policy import EffortSetting, StopRule
from tandem.types import Problem

LLM_REPLY = " ".join(f"Step {i} adds one thing." for i in range(80)) + " The answer is \\boxed{7}."


def slm_reply(prompt, text):
    # the SLM is right only when it was handed 60+ words of guidance
    prefix = prompt.assistant_prefix
    return " So the answer is \\boxed{7}." if len(prefix.split()) >= 60 else " I think \\boxed{5}."


def pair():
    return (ScriptedBackend(LLM_REPLY, name="big", n_params=1_500_000_000),
            ScriptedBackend(slm_reply, name="small", n_params=500_000_000))


PROBLEMS = [Problem(id=str(i), question=f"Question {i}: 3 + 4?", answer="7") for i in range(3)]


class AfterInsights:
    name = "after-insights"

    def __init__(self, n):
        self.n = n

    def sufficiency(self, f):
        return 0.9 if f["n_insights"] >= self.n else 0.1


def test_replay_equals_live_for_every_method():
    llm, slm = pair()
    grader = get_grader("gsm8k")
    rec = Prober(llm, slm, grader, ProbeConfig()).probe(PROBLEMS[0])
    assert [c["stage"] for c in rec["checkpoints"]] == [1, 2, 3, 4, 5]
    p = PairParams(llm.info.n_params, slm.info.n_params)
    rule = StopRule({e: EffortSetting(b, 0.5) for e, b in (("low", 64), ("medium", 128), ("high", 256))})
    policy = AfterInsights(16)
    t = Tandem(llm, slm, policy=policy, rule=rule)
    for method in ("slm", "llm", "fixed:32", "fixed:64", "fixed:128", "tandem:low", "tandem:medium",
                   "tandem:high"):
        llm.reset_cache(), slm.reset_cache()
        live_method, kw = (("tandem", {"effort": method.split(":")[1]}) if method.startswith("tandem")
                           else (method, {}))
        live_t = Tandem(llm, slm) if method.startswith("fixed") else t
        live = live_t.solve(PROBLEMS[0].question, method=live_method, **kw)
        rep = replay(rec, method, p, policy=policy, rule=rule)
        assert rep.answer == live.answer.answer, method
        assert rep.handover_tokens == live.handover_tokens, method
        assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens, method
        assert rep.slm_generated_tokens == live.cost.models["slm"].generated_tokens, method
        assert rep.slm_prompt_tokens == live.cost.models["slm"].input_tokens, method
        assert rep.flops_total == pytest.approx(live.cost.flops_total), method


class Calibrated:
    """A classifier stand-in with calibrated route and cascade thresholds."""

    name = "calibrated"

    def __init__(self, p, route_threshold=0.5, cascade_threshold=None):
        self.p, self.route_threshold, self.cascade_threshold = p, route_threshold, cascade_threshold

    def sufficiency(self, f):
        assert "slm_question_lp_mean" in f or "n_insights" in f
        return self.p


def test_a_hand_over_at_checkpoint_zero_is_recorded_alike_live_and_replayed():
    from tandem.bench.replay_run import replay_method

    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig()).probe(PROBLEMS[0])
    p = PairParams(llm.info.n_params, slm.info.n_params)
    policy = Calibrated(0.9)  # sufficient before the LLM writes
    rule = StopRule({"medium": EffortSetting(max_budget=128, threshold=0.5)})
    llm.reset_cache(), slm.reset_cache()
    live = Tandem(llm, slm, policy=policy, rule=rule).solve(PROBLEMS[0].question, method="tandem")
    rep = replay_method(rec, "tandem:medium", p, handover="continue", budgets=(32, 64, 128, 192, 256),
                        policy=policy, rule=rule)
    assert live.stop_reason == rep.stop_reason == "slm_alone"
    assert live.handover_tokens == rep.handover_tokens == 0  # a hand-over at checkpoint 0, not "no hand-over"
    assert rep.flops_total == pytest.approx(live.cost.flops_total)


def test_route_and_cascade_run_live_as_they_replay(tmp_path):
    from tandem.bench.replay_run import replay_method

    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig()).probe(PROBLEMS[0])
    p = PairParams(llm.info.n_params, slm.info.n_params)
    lp = rec["slm_alone"]["lp_mean"]
    cases = [("route", Calibrated(0.9), "slm_alone"), ("route", Calibrated(0.1), "llm_alone"),
             ("cascade", Calibrated(0.0, cascade_threshold=lp - 1), "slm_alone"),
             ("cascade", Calibrated(0.0, cascade_threshold=lp + 1), "escalated")]
    for method, policy, stop in cases:
        llm.reset_cache(), slm.reset_cache()
        live = Tandem(llm, slm, policy=policy).solve(PROBLEMS[0].question, method=method)
        rep = replay_method(rec, method, p, handover="continue", budgets=(32, 64, 128, 192, 256), policy=policy,
                            rule=StopRule(), route_threshold=policy.route_threshold,
                            cascade_threshold=policy.cascade_threshold)
        assert live.stop_reason == rep.stop_reason == stop, (method, stop)
        assert rep.answer == live.answer.answer, (method, stop)
        assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens, (method, stop)
        assert rep.slm_generated_tokens == live.cost.models["slm"].generated_tokens, (method, stop)
        assert rep.flops_total == pytest.approx(live.cost.flops_total), (method, stop)
    assert live.slm_text and live.answer.answer == "7"  # escalated: the SLM's text kept, the LLM's answer stands
    # a policy without shadow features routes without the scoring pass, live and replayed
    nosh = Calibrated(0.1)
    nosh.uses_shadow = False
    llm.reset_cache(), slm.reset_cache()
    live = Tandem(llm, slm, policy=nosh).solve(PROBLEMS[0].question, method="route")
    rep = replay_method(rec, "route", p, handover="continue", budgets=(32,), policy=nosh, rule=StopRule(),
                        route_threshold=0.5)
    assert live.cost.models["slm"].input_tokens == rep.slm_prompt_tokens == 0
    assert rep.flops_total == pytest.approx(live.cost.flops_total)
    # a threshold the probability cannot cross decides without the classifier: nothing scored, live and replayed
    for threshold, role in ((1.01, "llm"), (0.0, "slm")):
        policy = Calibrated(0.5, route_threshold=threshold)
        policy.sufficiency = None  # never consulted
        llm.reset_cache(), slm.reset_cache()
        live = Tandem(llm, slm, policy=policy).solve(PROBLEMS[0].question, method="route")
        rep = replay_method(rec, "route", p, handover="continue", budgets=(32,), policy=policy, rule=StopRule(),
                            route_threshold=threshold)
        alone = replay_method(rec, role, p, handover="continue", budgets=(32,))
        assert live.stop_reason == rep.stop_reason == f"{role}_alone" and not live.checkpoints
        assert rep.flops_total == pytest.approx(live.cost.flops_total) == pytest.approx(alone.flops_total)
    # cascade:T needs no classifier; plain cascade and route do
    llm.reset_cache(), slm.reset_cache()
    assert Tandem(llm, slm).solve(PROBLEMS[0].question, method=f"cascade:{lp + 1}").stop_reason == "escalated"
    for method in ("route", "cascade", "cascade:x", "fixed:x", "nope"):
        with pytest.raises(ConfigError):
            Tandem(llm, slm).solve(PROBLEMS[0].question, method=method)
        # a live run refuses it before it starts, instead of storing an error per sample
        with pytest.raises(ConfigError):
            run_live(PROBLEMS, Tandem(llm, slm), ["llm", method], get_grader("gsm8k"), RunStore(tmp_path / method),
                     dataset="d", grader_name="gsm8k")
        assert not (tmp_path / method).exists()


def test_agreement_replays_live_route_and_cascade_at_the_classifiers_thresholds(tmp_path):
    from tandem.bench.agreement import agreement_by_method, pair_outcomes, replay_for
    from tandem.bench.records import Outcome

    llm, slm = pair()
    grader = get_grader("gsm8k")
    run_probe(PROBLEMS, llm, slm, grader, RunStore(tmp_path / "p"), ProbeConfig(), dataset="d", grader_name="gsm8k")
    lp = next(iter(read_records(tmp_path / "p")))["slm_alone"]["lp_mean"]
    policy = Calibrated(0.1, route_threshold=0.05, cascade_threshold=lp + 1)  # route: SLM; cascade: escalate
    run_live(PROBLEMS, Tandem(llm, slm, policy=policy), ["route", "cascade"], grader, RunStore(tmp_path / "l"),
             dataset="d", grader_name="gsm8k")
    live = [Outcome.from_dict(d) for d in read_records(tmp_path / "l")]
    assert {o.stop_reason for o in live} == {"slm_alone", "escalated"}
    checks, skipped = pair_outcomes(live, replay_for(live, [tmp_path / "p"], "medium", policy, StopRule()), "medium")
    rows = {r.method: r for r in agreement_by_method(checks)}
    assert sum(skipped.values()) == 0
    assert all(rows[m].n == 3 and rows[m].same_answer == 3 and rows[m].same_tokens == 3 for m in ("route", "cascade"))


def test_oracle_picks_the_cheapest_correct_choice():
    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig()).probe(PROBLEMS[0])
    p = PairParams(llm.info.n_params, slm.info.n_params)
    o = replay(rec, "oracle", p)
    assert o.correct
    right = [replay(rec, f"fixed:{b}", p) for b in (64, 128, 192, 256)]
    assert all(r.correct for r in right) and not replay(rec, "fixed:32", p).correct
    assert o.flops_total == min(r.flops_total for r in right) and o.handover_tokens == right[0].handover_tokens


def test_replay_refuses_an_effort_budget_the_probe_lacks():
    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig(stage_budgets=(32, 64))).probe(PROBLEMS[0])
    with pytest.raises(ConfigError):
        replay(rec, "tandem:medium", PairParams(1, 1), policy=AfterInsights(1), rule=StopRule(),
               budgets=(32, 64))


def test_run_store_resumes_and_refuses_another_manifest(tmp_path):
    llm, slm = pair()
    store = RunStore(tmp_path / "run")
    cfg = ProbeConfig()
    assert run_probe(PROBLEMS[:2], llm, slm, get_grader("gsm8k"), store, cfg, dataset="d", grader_name="gsm8k") == 2
    assert run_probe(PROBLEMS, llm, slm, get_grader("gsm8k"), store, cfg, dataset="d", grader_name="gsm8k") == 1
    ids = [r["problem_id"] for r in read_records(store.dir)]
    assert ids == ["0", "1", "2"]
    assert store.manifest()["problem_ids"] == ["0", "1", "2"]
    with pytest.raises(ConfigError, match="another manifest"):
        run_probe(PROBLEMS, llm, slm, get_grader("gsm8k"), RunStore(tmp_path / "run"),
                  ProbeConfig(stage_budgets=(16,)), dataset="d", grader_name="gsm8k")
    # entropy kinds are recorded; a run recorded before they were (llama.cpp: exact) still resumes
    man = json.loads(store.manifest_path.read_text())
    assert man["entropy"] == {"llm": "exact", "slm": "exact"}
    del man["entropy"]
    store.manifest_path.write_text(json.dumps(man))
    assert run_probe(PROBLEMS, llm, slm, get_grader("gsm8k"), store, cfg, dataset="d", grader_name="gsm8k") == 0
    # more rows of the same benchmark and split extend a run; another benchmark with the same grader does not
    other = RunStore(tmp_path / "rows")
    run_probe(PROBLEMS[:1], llm, slm, get_grader("math"), other, cfg, dataset="math/test[0:1]", grader_name="math")
    run_probe(PROBLEMS[1:2], llm, slm, get_grader("math"), other, cfg, dataset="math/test[1:2]", grader_name="math")
    with pytest.raises(ConfigError, match="dataset"):
        run_probe(PROBLEMS[2:], llm, slm, get_grader("math"), other, cfg, dataset="math500/test[0:1]",
                  grader_name="math")
    # packed runs read back, and a torn last line is dropped; packing again changes no byte
    packed = pack(store.dir)
    first = packed.read_bytes()
    assert first[4:8] == bytes(4)  # no time stamp in the gzip header
    assert pack(store.dir).read_bytes() == first and not list(store.dir.glob("*.tmp"))
    with store.records_path.open("a") as f:
        f.write('{"key": "3", "problem_')
    assert len(list(read_records(store.dir))) == 3
    assert store.open(store.manifest()) == {"0", "1", "2"}
    assert store.records_path.read_text().endswith("\n")


def test_live_run_records_errors_apart(tmp_path):
    llm = ScriptedBackend(LLM_REPLY, fail_after=5)
    slm = ScriptedBackend(slm_reply)
    t = Tandem(llm, slm)
    run_live(PROBLEMS[:2], t, ["slm", "fixed:32"], get_grader("gsm8k"), RunStore(tmp_path / "r"),
             dataset="d", grader_name="gsm8k")
    recs = {r["key"]: r for r in read_records(tmp_path / "r")}
    assert recs["0|slm"]["error"] is None and recs["0|slm"]["answer"] == "5"
    assert "BackendError" in recs["0|fixed:32"]["error"] and recs["0|fixed:32"]["correct"] is False


def test_a_grading_that_fails_is_recorded_as_an_error_not_a_crash(tmp_path):
    from tandem.bench.sandbox import SandboxError

    def grader(problem, text):
        raise SandboxError("the sandbox could not start")

    llm, slm = pair()
    run_live(PROBLEMS[:2], Tandem(llm, slm), ["llm"], grader, RunStore(tmp_path / "r"), dataset="d",
             grader_name="gsm8k")
    recs = list(read_records(tmp_path / "r"))
    assert len(recs) == 2 and all("SandboxError" in r["error"] and r["correct"] is False for r in recs)


def test_live_run_keeps_several_samples_in_flight_where_the_backends_allow(tmp_path):
    import threading

    from tandem.bench.runner import _in_flight

    live, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02 * (i % 3))
        with lock:
            live[0] -= 1
        return i * i

    got = list(_in_flight(list(range(12)), work, 3))
    assert sorted(got) == [(i, i * i) for i in range(12)] and peak[0] == 3
    assert list(_in_flight([1, 2, 3], work, 1)) == [(1, 1), (2, 4), (3, 9)]

    def make(limit):
        return (ScriptedBackend(LLM_REPLY, name="big", n_params=1_500_000_000, token_delay_s=0.0005,
                                max_in_flight=limit),
                ScriptedBackend(slm_reply, name="small", n_params=500_000_000, max_in_flight=limit))

    problems = [Problem(id=str(i), question=f"Question {i}: 3 + 4?", answer="7") for i in range(6)]
    grader, methods = get_grader("gsm8k"), ["slm", "llm", "fixed:64"]
    run_live(problems, Tandem(*make(1)), methods, grader, RunStore(tmp_path / "serial"), dataset="d",
             grader_name="gsm8k")
    run_live(problems, Tandem(*make(None)), methods, grader, RunStore(tmp_path / "parallel"), dataset="d",
             grader_name="gsm8k", concurrency=4)
    def main_thread_grader(problem, text):  # graders may use signals: they run in the main thread
        assert threading.current_thread() is threading.main_thread()
        return grader(problem, text)

    run_live(problems, Tandem(*make(None)), methods, main_thread_grader, RunStore(tmp_path / "threads"),
             dataset="d", grader_name="gsm8k", concurrency=3)
    assert len(list(read_records(tmp_path / "threads"))) == 18
    serial = {r["key"]: r for r in read_records(tmp_path / "serial")}
    parallel = {r["key"]: r for r in read_records(tmp_path / "parallel")}
    assert set(serial) == set(parallel) and len(parallel) == 18
    assert all((serial[k]["answer"], serial[k]["correct"], serial[k]["handover_tokens"]) ==
               (parallel[k]["answer"], parallel[k]["correct"], parallel[k]["handover_tokens"]) for k in serial)
    assert json.loads((tmp_path / "parallel" / "manifest.json").read_text())["concurrency"] == 4
    # resuming with another concurrency is another experiment (wall times mean something else)
    with pytest.raises(ConfigError, match="concurrency"):
        run_live(problems, Tandem(*make(None)), methods, grader, RunStore(tmp_path / "parallel"), dataset="d",
                 grader_name="gsm8k", concurrency=2)
    # a live run recorded before concurrency was written resumes as the serial run it was
    man = json.loads((tmp_path / "serial" / "manifest.json").read_text())
    del man["concurrency"], man["entropy"]
    (tmp_path / "serial" / "manifest.json").write_text(json.dumps(man))
    assert run_live(problems, Tandem(*make(1)), methods, grader, RunStore(tmp_path / "serial"), dataset="d",
                    grader_name="gsm8k") == 0
    # backends that take one call at a time (embedded llama.cpp) refuse it
    with pytest.raises(ConfigError, match="one call|1 call"):
        run_live(problems, Tandem(*make(1)), methods, grader, RunStore(tmp_path / "x"), dataset="d",
                 grader_name="gsm8k", concurrency=2)


SCRIPTED_CONFIG = """
[llm]
kind = "scripted"
model = "big"
n_params = 1500000000
token_delay_s = 0.01
reply = "Step one adds things. Step two adds more. The answer is \\\\boxed{{7}}."

[slm]
kind = "scripted"
model = "small"
n_params = 500000000
reply = " The answer is \\\\boxed{{7}}."

[pipeline]
stage_budgets = [4, 8]
effort = "low"
"""


def test_eval_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED_CONFIG.format())
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tandem.cli", "eval", "gsm8k", "--split", "train", "--limit", "30",
           "--config", str(cfg), "--methods", "slm,llm", "--out", str(run), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (run / "records.jsonl").exists() and len((run / "records.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list(read_records(run)))
    assert 5 <= before < 60
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    keys = [r["key"] for r in read_records(run)]
    assert len(keys) == 60 and len(set(keys)) == 60
    assert json.loads((run / "manifest.json").read_text())["kind"] == "live"


def test_probe_and_report_commands_end_to_end(tmp_path, data_dir):
    from typer.testing import CliRunner

    from tandem.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED_CONFIG.format())
    runner = CliRunner()
    res = runner.invoke(app, ["probe", "gsm8k", "--split", "train", "--limit", "3", "--config", str(cfg),
                              "--budgets", "4,8", "--out", str(tmp_path / "p"), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(tmp_path / "p"), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    for m in ("`slm`", "`llm`", "`fixed:4`", "`fixed:8`", "`oracle`"):
        assert m in md
    assert (tmp_path / "rep" / "pareto.png").stat().st_size > 1000
    # a stored live run beside the probe table: the same methods on the same problems both stay
    res = runner.invoke(app, ["eval", "gsm8k", "--split", "train", "--limit", "3", "--config", str(cfg),
                              "--methods", "slm,llm", "--out", str(tmp_path / "live"), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(tmp_path / "live"), str(tmp_path / "p"), "--out", str(tmp_path / "j")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "j" / "report.md").read_text()
    for m in ("| `slm` |", "| `llm` |", "| `slm (replayed)` |", "| `llm (replayed)` |", "| `oracle` |"):
        assert m in md
    # a live run alone: the frontier is the oracle over the methods it ran
    res = runner.invoke(app, ["report", str(tmp_path / "live"), "--out", str(tmp_path / "lo")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "lo" / "report.md").read_text()
    assert "Oracle frontier over 3 problems" in md and "among the methods run" in md


def test_problem_errors_in_a_probe_are_recorded_not_graded(tmp_path):
    llm = ScriptedBackend(LLM_REPLY, fail_after=3)
    slm = ScriptedBackend(slm_reply)
    store = RunStore(tmp_path / "p")
    run_probe(PROBLEMS[:1], llm, slm, get_grader("gsm8k"), store, ProbeConfig(), dataset="d", grader_name="gsm8k")
    rec = next(iter(read_records(store.dir)))
    assert "BackendError" in rec["error"]


def test_read_records_reports_corruption(tmp_path):
    from tandem.errors import InputError

    d = tmp_path / "r"
    d.mkdir()
    (d / "records.jsonl").write_text('{"key": "a"}\nnot json\n')
    with pytest.raises(InputError, match="corrupt"):
        list(read_records(d))


def test_pipeline_config_used_by_probe_and_live_agree():
    # the probe's schedule is the live one: a probe for budgets (32, 64) places checkpoints as live does
    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig(stage_budgets=(32, 64))).probe(PROBLEMS[0])
    live = Tandem(llm, slm, config=PipelineConfig(stage_budgets=(32, 64)), policy=AfterInsights(99),
                  rule=StopRule({"medium": EffortSetting(64, 0.5)})).solve(PROBLEMS[0].question)
    assert [c["llm_tokens"] for c in rec["checkpoints"]] == [c.llm_tokens for c in live.checkpoints[1:]]
    assert Path  # noqa: B018


def test_agree_command_pairs_a_live_run_with_its_replay(tmp_path, data_dir):
    from typer.testing import CliRunner

    from tandem.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED_CONFIG.format())
    runner = CliRunner()
    common = ["gsm8k", "--split", "train", "--limit", "3", "--config", str(cfg), "--data-dir", str(data_dir)]
    res = runner.invoke(app, ["probe", *common, "--budgets", "4,8", "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", *common, "--methods", "slm,llm,fixed:4,tandem", "--out", str(tmp_path / "live")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["agree", str(tmp_path / "live"), str(tmp_path / "p"), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "a" / "agreement.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert set(rows) == {"slm", "llm", "fixed:4"}
    # `tandem` ran at effort low (budget 64): not a checkpoint of this table, so counted apart, not compared
    assert summary["not_paired"] == {"live_error": 0, "replay_error": 3, "not_in_probe": 0}
    for r in rows.values():  # scripted backends are deterministic: replay is live
        assert r["n"] == 3 and r["same_answer"] == r["same_tokens"] == r["same_handover"] == 3
        assert r["flops_ratio_median"] == pytest.approx(1.0)
    assert rows["fixed:4"]["method"] == "fixed:4"
    # a probe run is not a live run; a table with other budgets is refused; a problem in two tables too
    res = runner.invoke(app, ["agree", str(tmp_path / "p"), str(tmp_path / "p"), "--out", str(tmp_path / "b")])
    assert isinstance(res.exception, InputError) and "not a live run" in str(res.exception)
    res = runner.invoke(app, ["probe", *common, "--budgets", "4", "--out", str(tmp_path / "p4")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["agree", str(tmp_path / "live"), str(tmp_path / "p4"), "--out", str(tmp_path / "b")])
    assert isinstance(res.exception, InputError) and "stage_budgets differs" in str(res.exception)
    res = runner.invoke(app, ["agree", str(tmp_path / "live"), str(tmp_path / "p"), str(tmp_path / "p"),
                              "--out", str(tmp_path / "b")])
    assert isinstance(res.exception, InputError) and "in two probe tables" in str(res.exception)


def test_a_table_recorded_before_an_option_existed_pairs_with_a_live_run():
    """A probe table written before `decoding.sampling` existed decodes as a live run with no sampling
    values: comparable; one whose decoding really differs is refused."""
    from tandem.bench.agreement import comparable

    models = {"llm": {"name": "a", "checksum": "1"}, "slm": {"name": "b", "checksum": "2"}}
    decoding = {"llm_max_tokens": 64, "seed": 0, "slm_max_tokens": 32, "stop_at_answer": True, "temperature": 0.0}
    config = {"handover": "conclude", "stage_budgets": [4, 8], "max_unit_tokens": 32}
    old = {"kind": "probe", **models, "config": {**config, "decoding": decoding}}
    live = {"kind": "live", **models, "config": {**config, "decoding": {**decoding, "sampling": []}}}
    comparable(live, old, "t")
    sampled = {**live, "config": {**config, "decoding": {**decoding, "sampling": [["top_p", 0.95]]}}}
    with pytest.raises(InputError, match="decoding differs"):
        comparable(sampled, old, "t")


def test_agreement_counts_and_lists_disagreements():
    from tandem.bench.agreement import agreement_by_method, pair_outcomes, render_agreement
    from tandem.bench.records import Outcome

    def o(pid, method, answer, correct, slm_gen=10, wall=1.0, replayed=False, error=None):
        return Outcome(pid, method, correct=correct, answer=answer, slm_generated_tokens=slm_gen,
                       handover_tokens=None if method == "slm" else 128, flops_total=2.0, wall_seconds=wall,
                       replayed=replayed, error=error)

    live = [o("a", "slm", "1", True), o("b", "slm", "2", False, slm_gen=12, wall=3.0), o("a", "tandem", "1", True),
            o("c", "slm", None, False, error="boom"), o("d", "slm", "4", True)]
    replayed = {("a", "slm"): o("a", "slm", "1", True, replayed=True),
                ("b", "slm"): o("b", "slm", "3", True, slm_gen=15, wall=5.0, replayed=True),
                ("a", "tandem:high"): o("a", "tandem:high", "1", True, replayed=True)}
    checks, skipped = pair_outcomes(live, replayed, effort="high")
    assert skipped == {"live_error": 1, "replay_error": 0, "not_in_probe": 1}
    replayed[("d", "slm")] = o("d", "slm", None, False, replayed=True, error="not replayable: budget")
    checks, skipped = pair_outcomes(live, replayed, effort="high")
    assert skipped == {"live_error": 1, "replay_error": 1, "not_in_probe": 0}
    del replayed[("d", "slm")]
    checks, skipped = pair_outcomes(live, replayed, effort="high")
    assert skipped == {"live_error": 1, "replay_error": 0, "not_in_probe": 1}
    rows = {r.method: r for r in agreement_by_method(checks)}
    assert (rows["slm"].n, rows["slm"].same_answer, rows["slm"].same_correct, rows["slm"].same_tokens) == (2, 1, 1, 1)
    assert (rows["slm"].live_correct, rows["slm"].replayed_correct) == (1, 2)
    assert rows["slm"].live_wall_s == pytest.approx(2.0) and rows["slm"].replayed_wall_s == pytest.approx(3.0)
    assert rows["tandem"].same_answer == 1  # live `tandem` is replayed as `tandem:<the run's effort>`
    md = render_agreement(list(rows.values()), checks, skipped, "t")
    assert "| b | `slm` | 2 (no) | 3 (yes) |" in md and "| a | `slm`" not in md


def test_replay_equals_live_when_the_llm_is_let_finish():
    llm, slm = pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig()).probe(PROBLEMS[0])
    p = PairParams(llm.info.n_params, slm.info.n_params)
    for policy, budget, thr in ((AfterInsights(99), 64, 0.5), (AfterInsights(16), 128, 0.5),
                                (AfterInsights(16), 128, 1.01), (AfterInsights(99), 256, 0.5)):
        rule = StopRule({"medium": EffortSetting(budget, thr, finish=True)})
        llm.reset_cache(), slm.reset_cache()
        live = Tandem(llm, slm, policy=policy, rule=rule).solve(PROBLEMS[0].question)
        rep = replay(rec, "tandem:medium", p, policy=policy, rule=rule)
        assert rep.stop_reason == live.stop_reason
        assert rep.answer == live.answer.answer and rep.handover_tokens == live.handover_tokens
        assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens
        assert rep.slm_prompt_tokens == live.cost.models["slm"].input_tokens  # the shadow passes paid
        assert rep.flops_total == pytest.approx(live.cost.flops_total)
    assert live.stop_reason == "llm_finished" and live.checkpoints[-1].reason == "finish"
    # hint hand-over cannot let the LLM finish: the budget hands over, live and replayed
    assert replay(rec, "tandem:medium", p, policy=policy, rule=rule, handover="hint") == replay(
        rec, "tandem:medium", p, policy=policy, rule=rule.without_finish(), handover="hint")


HOLD_LOCK = """
import sys
from tandem.bench.store import RunStore
store = RunStore(sys.argv[1])
store.open({"kind": "live", "problem_ids": []})
print("locked", flush=True)
sys.stdin.read()  # hold the run until the test closes our stdin
"""


def hold_run(run: Path) -> subprocess.Popen:
    """Another process that holds `run` open, as a running `tandem eval` would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_store_has_one_writer_at_a_time(tmp_path):
    run = tmp_path / "run"
    holder = hold_run(run)
    try:
        with pytest.raises(InputError, match=rf"being written by another tandem process \(pid {holder.pid}\)"):
            RunStore(run).open({"kind": "live", "problem_ids": []})
    finally:
        holder.communicate("", timeout=30)
    # the holder is gone (however it ended, the kernel released its lock): the run opens, and holds it
    first = RunStore(run)
    assert first.open({"kind": "live", "problem_ids": []}) == set()
    with pytest.raises(InputError, match="another tandem process"):
        RunStore(run).open({"kind": "live", "problem_ids": []})
    first.close()
    with RunStore(run) as again:
        assert again.open({"kind": "live", "problem_ids": []}) == set()


def test_two_evals_on_one_run_directory_never_both_write(tmp_path, data_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED_CONFIG.format())
    run = tmp_path / "run"
    base = [sys.executable, "-m", "tandem.cli"]
    common = ["gsm8k", "--split", "train", "--limit", "6", "--config", str(cfg), "--out", str(run),
              "--data-dir", str(data_dir)]
    holder = hold_run(run)
    try:
        for cmd in (["eval", *common, "--methods", "slm,llm"], ["probe", *common]):
            res = subprocess.run(base + cmd, capture_output=True, text=True, timeout=120)
            assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
            assert "another tandem process" in res.stderr and "--out" in res.stderr
    finally:
        holder.communicate("", timeout=30)
    assert not (run / "records.jsonl").exists()
    # two evals started together on a new directory: the one that comes second either finds the run done
    # or is refused; the records are those of one run, each once
    common[common.index(str(run))] = str(tmp_path / "both")
    procs = [subprocess.Popen(base + ["eval", *common, "--methods", "slm,llm"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert sorted(code for _, _, code in results) in ([0, 0], [0, 2]), results
    keys = [r["key"] for r in read_records(tmp_path / "both")]
    assert len(keys) == 12 and len(set(keys)) == 12


@pytest.mark.parametrize(
    ("records", "manifest", "needle"),
    [
        ("[1, 2, 3]\n", None, "records.jsonl:1: corrupt record (not a JSON object)"),
        ('{"problem_id": "0"}\n', None, "records.jsonl:1: corrupt record (no string 'key')"),
        ("", "", "manifest.json: corrupt run manifest"),
        ("", "{not json", "manifest.json: corrupt run manifest"),
        ("", "[]", "manifest.json: corrupt run manifest (not a JSON object)"),
        ("", "\xff\xfe", "manifest.json: corrupt run manifest"),
    ],
    ids=["record-list", "record-without-key", "manifest-empty", "manifest-invalid", "manifest-list",
         "manifest-binary"],
)
def test_a_corrupt_run_store_is_refused_in_one_line(tmp_path, data_dir, records, manifest, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED_CONFIG.format())
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tandem.cli", "eval", "gsm8k", "--split", "train", "--limit", "2", "--config",
           str(cfg), "--methods", "slm", "--out", str(run), "--data-dir", str(data_dir)]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    if manifest is not None:
        (run / "manifest.json").write_bytes(manifest.encode("latin-1"))
    (run / "records.jsonl").write_text(records + (run / "records.jsonl").read_text())
    for args in (cmd, [sys.executable, "-m", "tandem.cli", "report", str(run), "--out", str(tmp_path / "rep")]):
        res = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        text = " ".join(res.stderr.split())
        assert len(res.stderr.strip().splitlines()) == 1 and needle in text, res.stderr


def test_a_run_directory_that_is_a_file_is_refused(tmp_path):
    llm, slm = pair()
    out = tmp_path / "out"
    out.write_text("not a directory")
    with pytest.raises(InputError, match="is a file, not a directory"):
        run_live(PROBLEMS[:1], Tandem(llm, slm), ["slm"], get_grader("gsm8k"), RunStore(out), dataset="d",
                 grader_name="gsm8k")
    assert out.read_text() == "not a directory"


def test_a_live_record_that_is_no_outcome_is_refused_by_report(tmp_path):
    run = tmp_path / "run"
    run_live(PROBLEMS[:1], Tandem(*pair()), ["slm"], get_grader("gsm8k"), RunStore(run), dataset="d",
             grader_name="gsm8k")
    with (run / "records.jsonl").open("a") as f:
        f.write('{"key": "9|slm", "score": 1}\n')
    res = subprocess.run([sys.executable, "-m", "tandem.cli", "report", str(run), "--out", str(tmp_path / "rep")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "'9|slm' is not an evaluation outcome" in res.stderr


def test_a_probe_store_line_that_is_no_probe_record_is_refused_in_one_line(tmp_path):
    from tandem.bench.replay_run import load_probe

    llm, slm = pair()
    store = RunStore(tmp_path / "run")
    run_probe(PROBLEMS[:1], llm, slm, get_grader("gsm8k"), store, ProbeConfig(), dataset="gsm8k/train[0:1]",
              grader_name="gsm8k")
    _, recs = load_probe(tmp_path / "run")
    assert recs[0]["checkpoints"][0]["slm"]["grade"]["correct"] in (True, False)
    with (tmp_path / "run" / "records.jsonl").open("a") as f:
        f.write(json.dumps({"key": "x", "problem_id": "x", "error": "ValueError: boom"}) + "\n")
        f.write(json.dumps({"key": "y", "problem_id": "y", "llm": {}}) + "\n")
    with pytest.raises(InputError, match=r"record 3 is no probe record \(it lacks ck0, slm_alone, checkpoints\)"):
        load_probe(tmp_path / "run")
