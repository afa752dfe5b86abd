"""Small pure parts: segmentation, stop rule, cost, features, config."""

from __future__ import annotations

import pytest

from tandem.config import load_settings
from tandem.cost import CostReport, Price
from tandem.errors import ConfigError
from tandem.features import FEATURE_NAMES, CheckpointInputs, available_groups, compute_features
from tandem.policy import BudgetPolicy, EffortSetting, StopRule
from tandem.segment import InsightSegmenter, gpra_kind
from tandem.types import TokenStep, Usage


def feed_all(seg, pieces):
    units = []
    for i, p in enumerate(pieces, 1):
        units += seg.feed(p, i)
    return units + seg.flush(len(pieces))


def test_continue_segmentation_splits_sentences_and_lines_but_not_decimals():
    seg = InsightSegmenter("continue")
    units = feed_all(seg, ["First", " we", " add", " 3.5", " and", " 2.", " Then", "\n", "x = 5", "\n"])
    texts = [u.text.strip() for u in units]
    assert texts == ["First we add 3.5 and 2.", "Then", "x = 5"]
    assert units[0].end_token == 7  # closed when the whitespace after "2." arrived


def test_hint_segmentation_tags_gpra_kinds():
    seg = InsightSegmenter("hint")
    text = "[Thinking Insights]\n**Goal:** find x\n- Planning: isolate x\nsubtract\nRetrieval: algebra\n### Action\ndo it"
    units = feed_all(seg, list(text))
    assert [u.kind for u in units] == [None, "goal", "planning", "planning", "retrieval", "action", "action"]


@pytest.mark.parametrize("line,kind", [("Goal: x", "goal"), ("2. Plan: y", "planning"), ("Actions:", "action"),
                                       ("Goalkeeper", None), ("The goal is", None)])
def test_gpra_kind(line, kind):
    assert gpra_kind(line) == kind


def test_stop_rule_thresholds_and_budget():
    rule = StopRule({"medium": EffortSetting(128, threshold=0.6, stage_thresholds={0: 0.9})})
    assert rule.decide(0.7, effort="medium", stage=0, llm_tokens=0).handover is False
    assert rule.decide(0.95, effort="medium", stage=0, llm_tokens=0).reason == "sufficient"
    assert rule.decide(0.7, effort="medium", stage=2, llm_tokens=64).reason == "sufficient"
    d = rule.decide(0.1, effort="medium", stage=3, llm_tokens=130)
    assert d.handover and d.reason == "budget"
    with pytest.raises(ValueError):
        rule.decide(0.1, effort="extreme", stage=0, llm_tokens=0)
    assert rule.with_budget("medium", 32).setting("medium").max_budget == 32
    assert BudgetPolicy().sufficiency({}) == 0.0


def test_cost_report_money_and_flops():
    rep = CostReport()
    m = rep.model("llm", "big", 10, Price(input_per_mtok=1.0, output_per_mtok=2.0))
    m.add(Usage(prompt_tokens=100, computed_prompt_tokens=60, cached_prompt_tokens=40, generated_tokens=5))
    m.add(Usage(prompt_tokens=10, computed_prompt_tokens=10), scoring=True)
    assert m.input_tokens == 70 and m.prompt_tokens_cached == 40
    assert m.flops_total == 2 * 10 * 75 and m.flops_generated == 2 * 10 * 5
    assert m.money == pytest.approx((70 * 1.0 + 5 * 2.0) / 1e6)
    assert rep.to_dict()["flops_total"] == m.flops_total


def test_features_complete_and_missing_groups():
    steps = [TokenStep("a", -0.5, 1.0), TokenStep("b", -1.5, 2.0), TokenStep("c", -0.1, 0.2)]
    trial = {"answer": "12", "lp_mean": -0.2, "lp_min": -0.5, "lp_sum": -0.4, "tokens": 2, "agree_prev": True}
    full = compute_features(CheckpointInputs(2, 3, [], steps, steps, steps, trial, "cut"))
    assert sorted(full) == sorted(FEATURE_NAMES)
    assert full["trial_lp_sum"] == -0.4 and full["trial_agree_prev"] == 1.0 and full["trial_has_answer"] == 1.0
    assert full["thought_end"] == 1.0 and full["thought_cut"] == 1.0
    no_answer = compute_features(CheckpointInputs(1, 3, [], None, steps, steps, {**trial, "answer": None}, "open"))
    assert no_answer["trial_lp_mean"] == 0.0 and no_answer["thought_end"] == 0.0 and "llm_n" not in no_answer
    assert full["slm_i_lp_mean"] == pytest.approx(-0.7)
    assert full["slm_i_lp_min"] == -1.5 and full["llm_tokens"] == 3
    no_shadow = compute_features(CheckpointInputs(0, 0, [], [], None, None))
    assert "slm_i_lp_mean" not in no_shadow and available_groups(no_shadow) == ["llm_stream", "progress"]
    assert no_shadow["llm_lp_mean"] == 0.0  # empty groups are zeros, never NaN


def test_config_rejects_unknown_keys_and_needs_openai_params(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[pipeline]\neffort = "high"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="pipeline.bogus: unknown key"):
        load_settings(p)
    p.write_text('[llm]\nkind = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:1"\n')
    with pytest.raises(ConfigError, match="n_params"):
        load_settings(p)
    y = tmp_path / "c.yaml"
    y.write_text("pipeline:\n  effort: low\n  handover: hint\n")
    s = load_settings(y, {"pipeline": {"seed": 3}})
    assert s.pipeline.effort == "low" and s.pipeline.handover == "hint" and s.pipeline.seed == 3
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "none.toml")


def test_decide_is_the_one_rule_for_every_event():
    from tandem.decision import CheckpointState, HandoverContext, HandoverWalk, decide

    rule = StopRule({"medium": EffortSetting(128, 0.8, {2: 0.6}, finish=True)})
    ctx = HandoverContext(rule, "medium")

    def at(stage, tokens, prob, event="budget", closed=None, c=ctx):
        d = decide(c, CheckpointState(stage, tokens, prob, event, closed))
        return d.handover, d.reason

    assert at(0, 0, 0.5, "start") == (False, "continue")
    assert at(2, 64, 0.65) == (True, "sufficient")  # the stage's own threshold
    assert at(3, 130, 0.1) == (False, "finish")  # the LLM writes a solution: let it finish
    assert at(3, 130, 0.1, c=HandoverContext(rule, "medium", "hint")) == (True, "budget")  # insights only
    assert at(3, 130, 0.1, c=HandoverContext(rule, "medium", "hint", llm_thinks=True)) == (False, "finish")
    assert at(2, 90, 0.1, "thought_end", False) == (True, "thought_end")  # cut: the LLM cannot answer
    assert at(2, 90, 0.1, "thought_end", True) == (False, "finish")  # closed: it answers itself
    assert at(1, 40, None, "stream_end") == (False, "llm_finished")
    assert at(1, 40, None, "stream_end", c=HandoverContext(rule, "medium", "hint")) == (True, "llm_finished")
    assert HandoverContext(StopRule({"medium": EffortSetting(128, 1.01, finish=True)}), "medium").llm_alone
    assert not HandoverContext(StopRule({"medium": EffortSetting(128, 1.01, finish=True)}), "medium", "hint").llm_alone
    walk = HandoverWalk(HandoverContext(rule, "medium", llm_thinks=True), n_stages=2)
    assert walk.visits("budget", 2) and not walk.visits("budget", 3)
    assert walk.step(2, 130, 0.1).reason == "finish" and walk.finishing
    assert not walk.visits("budget", 1) and not walk.visits("thought_end", 3, True)
    assert walk.visits("thought_end", 3, False)  # a cut thought is visited even after a finish
    assert walk.end(300) == walk.decisions[-1] and not walk.decisions[-1].handover
