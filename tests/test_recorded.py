"""The recorded backend: a reasoning LLM's logged outputs streamed as a live engine would, and the
pipeline's hand-over of a thought to a non-reasoning SLM (think-aware grading, the SLM's own answer
budget, answers from the SLM's part only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.backends.recorded import RecordedBackend, RecordedConfig, RecordingSet, check_recordings
from tandem.backends.scripted import ScriptedBackend
from tandem.backends.tokenizers import WordTokenizer
from tandem.bench.graders import grade_gsm8k
from tandem.bench.probe import ProbeConfig, Prober
from tandem.bench.replay import PairParams, replay
from tandem.errors import ConfigError, InputError
from tandem.pipeline import DecodingSettings, PipelineConfig, Tandem
from tandem.policy import BudgetPolicy, ConstantPolicy, EffortSetting, StopRule
from tandem.prompts import CONCLUDE_NUDGE, PromptSet
from tandem.types import GenerationRequest, Problem

Q1 = "Tom has 3 apples and buys 4 more. How many apples does he have?"
Q2 = "A box holds 6 eggs. How many eggs are in 5 boxes?"
THOUGHT1 = " ".join(f"step{i} counting apples." for i in range(40))  # 80 word tokens
OUT1 = THOUGHT1 + " So 3 plus 4 is 7 \\boxed{99}.</think>\n\nThe answer is \\boxed{7}."
OUT2 = " ".join(f"eggs{i} times boxes." for i in range(100))  # never closes: hit its cap


def write_recordings(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    return write_recordings(tmp_path / "rec.jsonl", [
        {"id": "p1", "question": Q1, "answer": "7", "output": OUT1, "finished_thinking": True,
         "model": "Org/Reasoner-32B", "params_total": 32_000_000_000},
        {"id": "p2", "question": Q2, "answer": "30", "output": OUT2, "finished_thinking": False,
         "model": "Org/Reasoner-32B", "params_total": 32_000_000_000},
    ])


def backend(path: Path, **kw) -> RecordedBackend:
    return RecordedBackend(RecordedConfig(path=str(path), tokenizer="words", **kw), WordTokenizer())


def request(q: str, max_tokens: int = 10_000) -> GenerationRequest:
    return GenerationRequest(PromptSet("math").solve(q), max_tokens=max_tokens)


def test_streams_the_recording_token_by_token(recordings: Path) -> None:
    b = backend(recordings)
    assert b.info.name == "Org/Reasoner-32B" and b.info.n_params == 32_000_000_000 and b.info.thinks
    assert not b.info.capabilities.stream_logprobs and b.info.capabilities.replayed
    with b.stream(request(Q1)) as s:
        steps = list(s)
    assert "".join(x.text for x in steps) == OUT1
    assert all(x.logprob is None and x.entropy is None for x in steps)
    assert s.finish_reason == "stop" and s.usage.generated_tokens == len(steps)
    assert s.usage.prompt_tokens == len(Q1.split())  # no template known for this name: the question alone
    with backend(recordings, prompt_rule="chatml-think").stream(request(Q1)) as s2:
        list(s2)
    assert s2.usage.prompt_tokens > len(Q1.split())  # the template around the question counts too


def test_a_thought_cut_by_the_cap_ends_as_a_token_limit(recordings: Path) -> None:
    with backend(recordings).stream(request(Q2)) as s:
        list(s)
    assert s.finish_reason == "length"
    with backend(recordings).stream(request(Q1, max_tokens=5)) as s:
        assert len(list(s)) == 5
    assert s.finish_reason == "length" and s.usage.generated_tokens == 5


def test_cancel_stops_at_once_and_counts_only_what_was_streamed(recordings: Path) -> None:
    s = backend(recordings).stream(request(Q1))
    for i, _ in enumerate(s, 1):
        if i == 7:
            s.close()
    assert s.cancelled and s.usage.generated_tokens == 7
    assert list(s) == []


def test_unknown_question_is_an_input_error(recordings: Path) -> None:
    with pytest.raises(InputError, match="no recording of this question"):
        backend(recordings).stream(request("What is 2 + 2?"))


def test_finds_by_question_whitespace_and_by_id(recordings: Path) -> None:
    rs = RecordingSet(recordings)
    assert rs.find("  " + Q1.replace(" ", "  ") + "\n") is not None
    assert rs.find(problem_id="p2") is not None and rs.find(problem_id="p3") is None


@pytest.mark.parametrize(("rows", "message"), [
    ([{"question": "q"}], r":1: `output` must be a non-empty string"),
    ([{"output": "x"}], r":1: give `question`"),
    (["[1, 2]"], r":1: a recording must be a JSON object"),
    ([{"question": "q", "output": "a"}, {"question": "q", "output": "b"}], r":2: the same question as line 1"),
    ([{"question": "q", "output": "a</think>b", "finished_thinking": False}], r"`finished_thinking` is false"),
    ([{"question": "q", "output": "a", "model": "A"}, {"question": "r", "output": "b", "model": "B"}],
     "one file holds one model"),
    ([{"question": "q", "output": "a", "token_ids": [1, -2]}], "`token_ids` must be"),
])
def test_bad_recordings_are_refused_with_their_line(tmp_path: Path, rows: list, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(InputError, match=message):
        RecordingSet(p)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q", "output": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not JSON"):
        RecordingSet(p)
    with pytest.raises(InputError, match="not found"):
        RecordingSet(tmp_path / "none.jsonl")


def test_parameter_count_is_required_for_flops(tmp_path: Path) -> None:
    p = write_recordings(tmp_path / "r.jsonl", [{"question": Q1, "output": OUT1}])
    with pytest.raises(ConfigError, match="parameter count"):
        backend(p)
    assert backend(p, n_params=7).info.n_params == 7


def test_check_recordings_summarises(recordings: Path) -> None:
    s = check_recordings(recordings, WordTokenizer(), {"p1": Q1, "p2": "another"})
    assert s["rows"] == 2 and s["finished_thinking"] == 1 and s["ids_in_benchmark"] == 2
    assert s["questions_equal_benchmark"] == 1 and s["tokens_max"] >= s["tokens_median"] > 0


# ---- the pipeline with a reasoning LLM ------------------------------------------------------------

def slm(reply: str = "Therefore the total is \\boxed{7}.") -> ScriptedBackend:
    return ScriptedBackend(reply, name="slm", n_params=1_000_000)


def pipe(recordings: Path, slm_backend: ScriptedBackend, handover: str = "continue", **dec) -> Tandem:
    cfg = PipelineConfig(handover=handover, stage_budgets=(16, 32, 64),  # type: ignore[arg-type]
                         decoding=DecodingSettings(llm_max_tokens=2000, slm_max_tokens=dec.pop("slm_max", 50)))
    return Tandem(backend(recordings), slm_backend, policy=BudgetPolicy(), rule=StopRule(), config=cfg)


def test_handover_keeps_the_thought_and_grades_only_the_slm_part(recordings: Path) -> None:
    t = pipe(recordings, slm("so I am done."))  # the SLM writes no answer
    r = t.solve(Q1, method="fixed:16")
    assert r.stop_reason == "budget" and r.handover_tokens and r.handover_tokens >= 16
    assert r.text.startswith("<think>\n") and "</think>" in r.text
    assert r.text.rsplit("</think>", 1)[1].strip() == "so I am done."
    assert r.answer.answer is None  # never a number from the LLM's thought
    assert grade_gsm8k(Problem("p1", Q1, "7"), r.text).reason == "no_answer_extracted"
    r = pipe(recordings, slm()).solve(Q1, method="fixed:16")
    assert r.answer.answer == "7"


def test_the_slm_answer_budget_is_its_own(recordings: Path) -> None:
    long_reply = " ".join(["word"] * 200)
    r = pipe(recordings, slm(long_reply), slm_max=40).solve(Q1, method="fixed:64")
    assert r.handover_tokens and r.handover_tokens >= 64
    assert r.cost.models["slm"].generated_tokens == 40  # not 40 minus the hand-over length


def test_afterthink_hands_over_where_the_thought_closes(recordings: Path) -> None:
    s = slm()
    r = pipe(recordings, s).solve(Q1, method="afterthink")
    thought_tokens = len(WordTokenizer().encode(OUT1.split("</think>")[0]))
    assert r.stop_reason == "thought_end" and r.handover_tokens is not None
    assert abs(r.handover_tokens - thought_tokens) <= 1
    assert "\\boxed{99}" in r.llm_text and r.answer.answer == "7"
    assert "</think>" not in s.stats.prompts[-1].split("<|assistant|>")[-1]  # tags removed for the SLM


def test_afterthink_needs_a_reasoning_llm() -> None:
    t = Tandem(ScriptedBackend("x"), slm(), config=PipelineConfig())
    with pytest.raises(ConfigError, match="reasoning LLM"):
        t.solve(Q1, method="afterthink")


def test_llm_alone_is_graded_after_its_thought(recordings: Path) -> None:
    t = pipe(recordings, slm())
    r = t.solve(Q1, method="llm")
    assert r.answer.answer == "7"  # after </think>, not the 99 boxed in the thought
    r2 = t.solve(Q2, method="llm")
    assert r2.truncated and r2.answer.answer is None
    assert grade_gsm8k(Problem("p2", Q2, "30"), r2.text).reason == "truncated"


def test_a_thought_cut_by_the_limit_is_concluded_by_the_slm(recordings: Path) -> None:
    # a policy that never judges the thought sufficient, with an effort that lets the LLM finish
    rule = StopRule({"medium": EffortSetting(max_budget=64, threshold=0.99, finish=True)})
    t = Tandem(backend(recordings), slm("So \\boxed{30}."), policy=ConstantPolicy(0.0), rule=rule,
               config=PipelineConfig(stage_budgets=(16, 64), decoding=DecodingSettings(2000, slm_max_tokens=50)))
    r = t.solve(Q2)
    assert r.stop_reason == "thought_end" and r.answer.answer == "30"
    r1 = t.solve(Q1)  # the thought closed: the LLM, let finish, answers itself
    assert r1.stop_reason == "llm_finished" and r1.answer.answer == "7"


def test_conclude_appends_the_nudge(recordings: Path) -> None:
    s = slm()
    pipe(recordings, s, handover="conclude").solve(Q1, method="fixed:32")
    assert s.stats.prompts[-1].endswith(CONCLUDE_NUDGE)


def test_streamed_answer_equals_the_final_text(recordings: Path) -> None:
    for method in ("fixed:16", "afterthink", "llm"):
        pieces: list[str] = []

        def keep(event: str, payload: dict, pieces: list[str] = pieces) -> None:
            if event == "answer_delta":
                pieces.append(payload["text"])

        r = pipe(recordings, slm()).solve(Q1, method=method, on_event=keep)
        assert "".join(pieces) == r.text, method


# ---- probe and replay --------------------------------------------------------------------------

def test_probe_keeps_no_recorded_text_and_replays_as_live(recordings: Path) -> None:
    rec_llm = backend(recordings)
    cfg = ProbeConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50))
    prober = Prober(rec_llm, slm(), grade_gsm8k, cfg)
    records = {pid: prober.probe(Problem(pid, q, a)) for pid, q, a in (("p1", Q1, "7"), ("p2", Q2, "30"))}
    dumped = json.dumps(records)
    for out in (OUT1, OUT2):
        pieces = [out[i:i + 64] for i in range(0, len(out) - 64, 64)]
        assert not any(p in dumped for p in pieces)
    r1, r2 = records["p1"], records["p2"]
    assert r1["version"] == "probe-v2" and r1["llm"]["text"] is None
    assert r1["llm"]["grade"]["correct"] and not r2["llm"]["grade"]["correct"]
    assert r2["llm"]["grade"]["reason"] == "truncated"
    ends = [ck for ck in r1["checkpoints"] if ck["event"] == "thought_end"]
    assert len(ends) == 1 and ends[0]["thought_closed"] is True
    assert r2["checkpoints"][-1]["event"] == "thought_end" and r2["checkpoints"][-1]["thought_closed"] is False
    assert all("llm_n" not in ck["features"] for ck in r1["checkpoints"])  # absent, not zero
    p = PairParams(llm=rec_llm.info.n_params, slm=1_000_000)
    for pid, q in (("p1", Q1), ("p2", Q2)):
        for method in ("fixed:16", "fixed:64", "afterthink", "llm", "slm"):
            live = pipe(recordings, slm()).solve(q, method=method)
            rep = replay(records[pid], method, p)
            assert rep.correct == (live.answer.answer == records[pid]["gold"]), (pid, method)
            assert rep.handover_tokens == live.handover_tokens or method in ("llm", "slm"), (pid, method)
            assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens, (pid, method)


def test_stop_at_answer_ends_the_slm_after_its_boxed_line(recordings: Path) -> None:
    reply = "So the total is \\boxed{7}.\n" + "Let me double check this again. " * 20
    t = pipe(recordings, slm(reply), slm_max=200)
    full = t.solve(Q1, method="fixed:16")
    cut = t.solve(Q1, method="fixed:16", stop_at_answer=True)
    assert full.slm_text == reply[: len(full.slm_text)] and len(full.slm_text) > len(cut.slm_text)
    assert cut.slm_text.startswith("So the total is \\boxed{7}.\n") and cut.answer.answer == "7"
    assert cut.finish_reason == "stop" and not cut.truncated
    assert cut.cost.models["slm"].generated_tokens < full.cost.models["slm"].generated_tokens
    llm = t.solve(Q1, method="llm", stop_at_answer=True)  # the LLM's boxes in its thought do not count
    assert llm.answer.answer == "7" and llm.text.endswith("\\boxed{7}.")


def test_answer_complete_rules() -> None:
    from tandem.answer import answer_complete

    assert not answer_complete("so \\boxed{5}")  # the line goes on
    assert answer_complete("so \\boxed{5}.\n") and answer_complete("\\boxed{bed}" + "x" * 60)
    assert not answer_complete("an empty \\boxed{} box\n") and not answer_complete("\\boxed{\\frac{1}{2}\n")
    assert not answer_complete("\\boxed{5}\n", thinks=True)  # still inside the thought
    assert answer_complete("thought \\boxed{4}\n</think> so \\boxed{5}\n", thinks=True)


def test_replay_of_a_recorded_table_finished_only_and_unknown_wall(recordings: Path, tmp_path: Path) -> None:
    from tandem.bench.replay_run import replay_dirs
    from tandem.bench.report import summarize
    from tandem.bench.runner import run_probe
    from tandem.bench.store import RunStore

    cfg = ProbeConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50))
    problems = [Problem("p1", Q1, "7"), Problem("p2", Q2, "30")]
    run_probe(problems, backend(recordings), slm(), grade_gsm8k, RunStore(tmp_path / "t"), cfg, dataset="x",
              grader_name="gsm8k")
    outs, _, notes = replay_dirs([tmp_path / "t"], None, None)
    assert {o.problem_id for o in outs} == {"p1", "p2"} and "afterthink" in {o.method for o in outs}
    outs, _, notes = replay_dirs([tmp_path / "t"], None, None, finished_only=True)
    assert {o.problem_id for o in outs} == {"p1"} and "of 2: those whose thought closed" in notes[0]
    rows = {s.method: s for s in summarize(outs, baseline="llm")}
    assert rows["llm"].mean_wall_seconds is None and rows["fixed:16"].wall_ratio is None
    assert rows["slm"].mean_wall_seconds is not None  # the SLM ran live: its time is measured
    # an LLM answer cut after its thought closed: finished, but not complete
    import json
    import shutil

    from tandem.bench.probe_records import llm_answer_complete, thought_closed
    from tandem.bench.store import read_records
    from tandem.train.data import load_tables

    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(tmp_path / "t" / "manifest.json", cut / "manifest.json")
    recs = list(read_records(tmp_path / "t"))
    for r in recs:
        if r["problem_id"] == "p1":
            assert thought_closed(r) and llm_answer_complete(r)  # type: ignore[arg-type]
            r["llm"]["finish"] = "length"
            assert thought_closed(r) and not llm_answer_complete(r)  # type: ignore[arg-type]
    (cut / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    outs, _, notes = replay_dirs([cut], "llm", None, finished_only=True)
    assert {o.problem_id for o in outs} == {"p1"}
    outs, _, notes = replay_dirs([cut], "llm", None, complete_only=True)
    assert outs == [] and "of 2: those whose LLM answer is complete" in notes[0]
    kept = load_tables([cut], allow_test_split=True, complete_only=True)[0].records
    assert kept == [] and len(load_tables([cut], allow_test_split=True, finished_only=True)[0].records) == 1


class _AgreeingTrials:
    """Sufficient once two trial answers in a row agree (a DEER-style rule)."""

    name = "agree"
    uses_shadow = True
    uses_trial = True

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.9 if features.get("trial_agree_prev") else 0.0


class _AgreeingTrialsOnly(_AgreeingTrials):
    """The same rule from the trial answers alone: no shadow-pass feature read."""

    uses_shadow = False


def _trial_slm() -> ScriptedBackend:
    def reply(prompt, rendered: str) -> str:
        return "7}." if rendered.endswith("\\boxed{") else "Therefore the total is \\boxed{7}."
    return ScriptedBackend(reply, name="slm", n_params=1_000_000)


@pytest.mark.parametrize("policy", [_AgreeingTrials, _AgreeingTrialsOnly])
def test_trial_answers_live_and_replayed_agree(recordings: Path, policy: type[_AgreeingTrials]) -> None:
    """A policy that reads trial answers pays for the SLM reading the prefix they answer from: in the
    shadow pass where it reads that pass's features, else in the trial request itself (exact up to the
    token each request re-reads where the cached text ends)."""
    rule = StopRule({"medium": EffortSetting(max_budget=64, threshold=0.5)})
    cfg = PipelineConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50))
    events: list[str] = []
    live = Tandem(backend(recordings), _trial_slm(), policy=policy(), rule=rule, config=cfg).solve(
        Q1, on_event=lambda e, p: events.append(e))
    assert events.count("trial") == 2  # checkpoint 0, then checkpoint 1, where two answers agree
    assert live.stop_reason == "sufficient" and live.checkpoints[1].features["trial_agree_prev"] == 1.0
    pcfg = ProbeConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50),
                       trial_tokens=16)
    rec = Prober(backend(recordings), _trial_slm(), grade_gsm8k, pcfg).probe(Problem("p1", Q1, "7"))
    assert rec["ck0"]["trial"]["answer"] == "7" and rec["checkpoints"][0]["trial"]["agree_prev"]
    out = replay(rec, "tandem:medium", PairParams(32_000_000_000, 1_000_000), policy=policy(),
                 rule=rule, budgets=(16, 32, 64))
    assert out.handover_tokens == live.handover_tokens and out.correct
    slm = live.cost.models["slm"]
    assert out.slm_generated_tokens == slm.generated_tokens
    if policy is _AgreeingTrials:
        assert out.slm_prompt_tokens == slm.input_tokens
    else:
        assert abs(out.slm_prompt_tokens - slm.input_tokens) <= 2 and "slm_score" not in live.cost.phases


def test_purpose_decides_which_test_split_tables_may_be_fitted(recordings: Path, tmp_path: Path) -> None:
    from tandem.bench.runner import run_probe
    from tandem.bench.store import RunStore
    from tandem.train.data import load_tables

    cfg = ProbeConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50))
    for purpose in ("train", "dev", None):
        run_probe([Problem("p1", Q1, "7")], backend(recordings), slm(), grade_gsm8k,
                  RunStore(tmp_path / str(purpose)), cfg, dataset="gsm8k/test[0:37]", grader_name="gsm8k",
                  purpose=purpose)
    assert len(load_tables([tmp_path / "train"])) == 1  # recorded test rows set apart for training
    with pytest.raises(ConfigError, match="marked for dev"):
        load_tables([tmp_path / "dev"])
    with pytest.raises(ConfigError, match="holds a test split"):
        load_tables([tmp_path / "None"])


def test_preset_and_effort_budgets_from_settings(recordings: Path) -> None:
    from tandem.config import load_settings
    from tandem.factory import build_tandem

    st = load_settings(None, {"llm": {"kind": "recorded", "model": str(recordings), "tokenizer": "words"},
                              "slm": {"kind": "scripted", "model": "slm", "reply": "So \\boxed{7}."},
                              "pipeline": {"preset": "reasoning", "effort_budgets": {"low": 64},
                                           "slm_max_tokens": 100}})
    assert st.pipeline.stage_budgets == (256, 512, 1024, 1536) and st.pipeline.stop_at_answer
    assert st.pipeline.slm_max_tokens == 100  # what the settings give wins over the preset
    t = build_tandem(st)
    assert t.rule.setting("low").max_budget == 64 and t.rule.setting("medium").max_budget == 128
    r = t.solve(Q1, effort="low")
    assert r.stop_reason == "budget" and r.handover_tokens is not None and 64 <= r.handover_tokens < 256


def test_a_context_too_small_is_refused_up_front(recordings: Path) -> None:
    from tandem.config import load_settings
    from tandem.factory import build_tandem

    st = load_settings(None, {"llm": {"kind": "recorded", "model": str(recordings), "tokenizer": "words"},
                              "slm": {"kind": "scripted", "model": "slm"},
                              "pipeline": {"effort_budgets": {"medium": 8000}, "slm_max_tokens": 512}})
    with pytest.raises(ConfigError, match="the SLM's context"):
        build_tandem(st)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "inline"])
async def test_serve_with_a_recorded_llm(recordings: Path, anyio_backend: str, field: str) -> None:
    import httpx

    from tandem.config import TandemSettings
    from tandem.server import create_app

    t = Tandem(backend(recordings), slm(), policy=BudgetPolicy(), rule=StopRule(),
               config=PipelineConfig(stage_budgets=(16, 32, 64), decoding=DecodingSettings(2000, slm_max_tokens=50)))
    app = create_app(TandemSettings(server={"reasoning_field": field}), tandem=t)
    thought = THOUGHT1[: len(" ".join(THOUGHT1.split()[:16]))]  # the first 16 words reach the SLM
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30) as c:
        r = await c.post("/v1/chat/completions", json={"model": "tandem-low", "max_tokens": 2000,
                                                       "messages": [{"role": "user", "content": Q1}]})
        assert r.status_code == 200, r.text
        data = r.json()
        msg = data["choices"][0]["message"]
        assert data["tandem"]["stop_reason"] == "budget"
        if field == "inline":
            assert msg["content"].startswith("<think>\n" + thought) and "reasoning_content" not in msg
            assert msg["content"].rsplit("</think>", 1)[1].strip() == "Therefore the total is \\boxed{7}."
        else:
            assert msg["content"] == "Therefore the total is \\boxed{7}." and msg[field].startswith(thought)
            assert "</think>" not in msg[field]
            parts = data["tandem"]["parts"]
            assert [p["role"] for p in parts] == ["slm"] and parts[0]["end"] == len(msg["content"])
        r = await c.post("/v1/chat/completions", json={"model": "tandem-low", "stream": True, "max_tokens": 2000,
                                                       "messages": [{"role": "user", "content": Q1}]})
        assert r.status_code == 200
        deltas = [json.loads(line[6:])["choices"] for line in r.text.splitlines()
                  if line.startswith("data: {")]
        content = "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
        reasoning = "".join(c[0]["delta"].get(field) or "" for c in deltas if c) if field != "inline" else ""
        assert content == msg["content"] and reasoning == msg.get(field, "")
        bad = await c.post("/v1/chat/completions", json={"model": "tandem",
                                                         "messages": [{"role": "user", "content": "2+2?"}]})
        assert bad.status_code == 400 and "no recording" in bad.json()["error"]["message"]


def test_a_recording_at_its_cap_ends_as_cut_even_after_its_thought(recordings: Path) -> None:
    n = len(WordTokenizer().encode(OUT1))
    with backend(recordings, cap_tokens=n).stream(request(Q1)) as s:
        list(s)
    assert s.finish_reason == "length"
    with backend(recordings, cap_tokens=n + 1).stream(request(Q1)) as s:
        list(s)
    assert s.finish_reason == "stop"


class _ThinkingSLM(ScriptedBackend):
    """An SLM whose template opens a thought: it writes on in it, closes it, then answers."""

    @property
    def info(self):  # type: ignore[override]
        from dataclasses import replace

        return replace(super().info, thinks=True)


@pytest.mark.parametrize("handover", ["continue", "conclude", "hint"])
def test_a_reasoning_slm_goes_on_inside_the_thought(recordings: Path, handover: str) -> None:
    s = _ThinkingSLM("so it is 7.\n</think>\n\nThe answer is \\boxed{7}.", name="slm")
    for method in ("fixed:16", "slm", "afterthink"):
        pieces: list[str] = []

        def keep(event: str, payload: dict, pieces: list[str] = pieces) -> None:
            if event == "answer_delta":
                pieces.append(payload["text"])

        r = pipe(recordings, s, handover=handover).solve(Q1, method=method, on_event=keep)
        assert "".join(pieces) == r.text, (handover, method)
        assert r.text.startswith("<think>\n") and r.answer.answer == "7", (handover, method)
        if method == "fixed:16" and handover != "hint":  # one thought: the LLM's, then the SLM's, one close
            assert r.text.count("</think>") == 1


class _ShadowPolicy:
    """Reads the features (so every checkpoint pays its shadow pass); sufficient from `n` insights on."""

    name = "shadow-insights"

    def __init__(self, n: int) -> None:
        self.n = n

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.9 if features["n_insights"] >= self.n else 0.1


def test_a_reasoning_llm_let_finish_replays_as_live_in_every_mode(recordings: Path) -> None:
    """One walk decides live and in replay: a reasoning LLM writes its own answer in every hand-over
    mode, so `finish` applies to conclude and hint too (a closed thought: the LLM answers; a cut one:
    the SLM concludes)."""
    p = PairParams(32_000_000_000, 1_000_000)
    seen: set[tuple[str, str, str]] = set()
    for mode in ("continue", "conclude", "hint"):
        pcfg = ProbeConfig(handover=mode, stage_budgets=(16, 32, 64),
                           decoding=DecodingSettings(2000, slm_max_tokens=50))
        prober = Prober(backend(recordings), slm(), grade_gsm8k, pcfg)
        for q, pid, gold in ((Q1, "p1", "7"), (Q2, "p2", "30")):
            rec = prober.probe(Problem(pid, q, gold))
            for policy, budget, thr in ((_ShadowPolicy(1000), 32, 0.5), (_ShadowPolicy(3), 64, 0.5),
                                        (_ShadowPolicy(1000), 64, 1.01)):
                rule = StopRule({"medium": EffortSetting(budget, thr, finish=True)})
                cfg = PipelineConfig(handover=mode, stage_budgets=(16, 32, 64),  # type: ignore[arg-type]
                                     decoding=DecodingSettings(llm_max_tokens=2000, slm_max_tokens=50))
                live = Tandem(backend(recordings), slm(), policy=policy, rule=rule, config=cfg).solve(q)
                rep = replay(rec, "tandem:medium", p, policy=policy, rule=rule, handover=mode,
                             budgets=(16, 32, 64))
                where = (mode, pid, budget, thr)
                assert rep.stop_reason == live.stop_reason, where
                assert rep.handover_tokens == live.handover_tokens, where
                assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens, where
                # a shadow pass after skipped checkpoints (a cut thought after a finish) is priced from their
                # increments: exact up to the one token each re-reads where the texts join
                assert abs(rep.slm_prompt_tokens - live.cost.models["slm"].input_tokens) <= 2, where
                if thr <= 1.0:  # else the effort is the LLM alone
                    seen.add((mode, pid, live.stop_reason))
    # the LLM answered itself where its thought closed, in conclude and hint too; a cut one was handed over
    assert {("conclude", "p1", "llm_finished"), ("hint", "p1", "llm_finished")} <= seen
    assert not any(pid == "p2" and stop == "llm_finished" for _, pid, stop in seen)
    assert ("conclude", "p2", "thought_end") in seen
