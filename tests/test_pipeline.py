"""The pipeline on the scripted backend: decisions, cancellation, hand-over, cost."""

from __future__ import annotations

import pytest

from tandem import BackendError, ConfigError, InputError, PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend, tokenize
from tandem.policy import ConstantPolicy, EffortSetting, StopRule

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
# 80 sentences of 5 tokens: boundaries every 5 tokens, far longer than any budget
LLM_REPLY = " ".join(f"Step {i} adds one thing." for i in range(80)) + " The answer is \\boxed{7}."
SLM_REPLY = " So 3 + 4 = 7. The answer is \\boxed{7}."


def make(llm_reply: str = LLM_REPLY, slm_reply: str = SLM_REPLY, **kw):
    llm = ScriptedBackend(llm_reply, name="big", n_params=1_500_000_000)
    slm = ScriptedBackend(slm_reply, name="small", n_params=500_000_000)
    return llm, slm, Tandem(llm, slm, **kw)


def test_budget_handover_cancels_llm_stream_at_first_boundary_after_budget():
    llm, slm, t = make()
    r = t.solve(QUESTION)  # medium effort: budget 128
    assert r.stop_reason == "budget"
    assert r.handover_tokens is not None and 128 <= r.handover_tokens < 128 + 5
    # the LLM stream was cancelled: it yielded exactly the tokens before the hand-over
    assert llm.stats.streams_cancelled == 1
    assert llm.stats.tokens_yielded == r.handover_tokens
    assert r.cost.models["llm"].generated_tokens == r.handover_tokens
    # the SLM continued the same assistant turn from the LLM's prefix
    assert slm.stats.prompts[-1].endswith(r.llm_text)
    assert r.llm_text.endswith("thing.")  # the SLM continues from a whole insight unit
    assert r.text == r.llm_text + r.slm_text
    assert r.answer.answer == "7"
    assert r.cancel_latency_s is not None and r.cancel_latency_s >= 0


def test_checkpoints_fall_on_boundaries_after_each_stage_budget():
    _, _, t = make()
    r = t.solve(QUESTION, effort="high")  # budgets 32, 64, 128, 192, 256
    stages = [(c.stage, c.llm_tokens) for c in r.checkpoints]
    assert stages[0] == (0, 0)
    for (stage, n), budget in zip(stages[1:], (32, 64, 128, 192, 256), strict=True):
        assert budget <= n < budget + 5, (stage, n, budget)
    assert r.checkpoints[-1].handover and r.checkpoints[-1].reason == "budget"
    assert all(not c.handover for c in r.checkpoints[:-1])


def test_budget_policy_skips_shadow_passes():
    _, slm, t = make()
    r = t.solve(QUESTION)
    assert r.cost.models["slm"].scored_tokens == 0
    assert r.cost.models["slm"].prompt_tokens_computed == len(tokenize(slm.stats.prompts[-1]))


def test_handover_continuation_reuses_the_shadow_cache():
    class Never:
        name = "never"

        def sufficiency(self, f):
            return 0.0

    _, slm, t = make(policy=Never())
    r = t.solve(QUESTION)
    slm_cost = r.cost.models["slm"]
    # the shadow pass scored exactly the hand-over prompt, so the continuation computed none of it
    handover_prompt = slm.stats.prompts[-1]
    assert slm_cost.prompt_tokens_computed == 0
    # each prompt token is computed once; a token at a text boundary may be recomputed per checkpoint
    n = len(tokenize(handover_prompt))
    assert n <= slm_cost.scored_tokens <= n + len(r.checkpoints)


def test_sufficient_at_checkpoint_zero_never_starts_the_llm():
    llm, slm, t = make(policy=ConstantPolicy(1.0), rule=StopRule({"medium": EffortSetting(128, 0.5)}))
    r = t.solve(QUESTION)
    assert r.stop_reason == "slm_alone"
    assert llm.stats.streams_started == 0
    assert r.cost.models["llm"].generated_tokens == 0
    assert r.answer.answer == "7"


def test_policy_probability_above_threshold_hands_over_early():
    class AfterTwoInsights:
        name = "two"

        def sufficiency(self, f):
            return 0.9 if f["n_insights"] >= 2 else 0.1

    rule = StopRule({"medium": EffortSetting(256, threshold=0.5)})
    _, _, t = make(policy=AfterTwoInsights(), rule=rule)
    r = t.solve(QUESTION)
    assert r.stop_reason == "sufficient"
    assert r.handover_tokens is not None and r.handover_tokens < 40


def test_llm_finishing_first_keeps_its_answer_in_continue_mode():
    short = "3 + 4 = 7. The answer is \\boxed{7}."
    llm, slm, t = make(llm_reply=short)
    r = t.solve(QUESTION)
    assert r.stop_reason == "llm_finished"
    assert slm.stats.streams_started == 0
    assert r.answer.answer == "7" and r.handover_tokens is None


def test_hint_mode_puts_insights_in_the_slm_prompt_and_tags_gpra():
    gpra = (
        "[Thinking Insights]\nGoal: total apples.\nPlanning: add the two amounts.\n"
        "Retrieval: addition.\nAction: add 3 and 4.\n" + "More detail here. " * 60
    )
    llm, slm, t = make(llm_reply=gpra, slm_reply="3 + 4 = 7, so \\boxed{7}.",
                       config=PipelineConfig(handover="hint"))
    r = t.solve(QUESTION, effort="low")
    assert "[Thinking Insights]" in slm.stats.prompts[-1]
    assert "Goal: total apples." in slm.stats.prompts[-1]
    kinds = {u.kind for u in r.insights}
    assert {"goal", "planning", "retrieval", "action"} <= kinds
    assert r.checkpoints[-1].features["gpra_action"] == 1.0
    assert r.text == r.slm_text and r.answer.answer == "7"


def test_continue_mode_refused_across_tokenizers():
    llm = ScriptedBackend(LLM_REPLY, tokenizer_id="a")
    slm = ScriptedBackend(SLM_REPLY, tokenizer_id="b")
    with pytest.raises(ConfigError, match="hint"):
        Tandem(llm, slm).solve(QUESTION)
    r = Tandem(llm, slm, config=PipelineConfig(handover="hint")).solve(QUESTION)
    assert r.stop_reason == "budget"


def test_baselines_through_the_same_interface():
    llm, slm, t = make()
    r_slm = t.solve(QUESTION, method="slm")
    assert r_slm.stop_reason == "slm_alone" and llm.stats.streams_started == 0
    assert r_slm.cost.models["llm"].flops_total == 0
    r_llm = t.solve(QUESTION, method="llm")
    assert r_llm.stop_reason == "llm_alone" and r_llm.answer.answer == "7"
    assert r_llm.cost.models["llm"].generated_tokens == len(tokenize(LLM_REPLY))


def test_fixed_budget_method():
    _, _, t = make()
    r = t.solve(QUESTION, method="fixed:32")
    assert 32 <= r.handover_tokens < 37
    with pytest.raises(ConfigError):
        t.solve(QUESTION, method="fixed:x")
    with pytest.raises(ConfigError):
        t.solve(QUESTION, method="bogus")


def test_empty_question_is_refused():
    _, _, t = make()
    with pytest.raises(InputError):
        t.solve("   ")


def test_backend_failure_mid_stream_is_an_error_not_an_answer():
    llm = ScriptedBackend(LLM_REPLY, fail_after=10)
    slm = ScriptedBackend(SLM_REPLY)
    with pytest.raises(BackendError):
        Tandem(llm, slm).solve(QUESTION)


def test_cost_counts_both_models_and_both_flops_definitions():
    _, _, t = make()
    r = t.solve(QUESTION)
    llm, slm = r.cost.models["llm"], r.cost.models["slm"]
    assert llm.flops_generated == 2 * 1_500_000_000 * llm.generated_tokens
    assert llm.flops_total == 2 * 1_500_000_000 * (llm.prompt_tokens_computed + llm.generated_tokens)
    assert r.cost.flops_total == pytest.approx(llm.flops_total + slm.flops_total)
    assert r.cost.flops_generated < r.cost.flops_total
    assert set(r.cost.phases) >= {"llm_stream", "slm_generate", "decide"}


def test_events_are_emitted_in_order():
    _, _, t = make()
    seen = []
    t.solve(QUESTION, on_event=lambda e, p: seen.append(e))
    assert seen[0] == "checkpoint"
    assert "insight" in seen and "handover" in seen
    assert seen.index("handover") > max(i for i, e in enumerate(seen) if e == "llm_token")
    assert seen[-1] in ("slm_token", "answer_delta")


def test_result_serialises():
    import json

    _, _, t = make()
    d = t.solve(QUESTION).to_dict()
    json.dumps(d)
    assert d["cost"]["flops_total"] > 0 and d["checkpoints"][0]["stage"] == 0


@pytest.mark.parametrize("reply", [LLM_REPLY, "3 + 4 = 7. The answer is \\boxed{7}.",
                                   " ".join(f"w{i}" for i in range(300)) + " done."])
def test_answer_deltas_concatenate_to_the_final_text(reply):
    _, _, t = make(llm_reply=reply)
    for method in ("tandem", "slm", "llm"):
        deltas: list[str] = []

        def hook(e, p, deltas=deltas):
            if e == "answer_delta":
                deltas.append(p["text"])

        r = t.solve(QUESTION, method=method, on_event=hook)
        assert "".join(deltas) == r.text, method


def test_an_event_hook_can_cancel_the_run_and_every_stream_closes():
    from tandem.errors import Cancelled

    llm, slm, t = make()

    def hook(event, payload):
        if event == "llm_token" and llm.stats.tokens_yielded >= 10:
            raise Cancelled("client went away")

    with pytest.raises(Cancelled):
        t.solve(QUESTION, on_event=hook)
    assert llm.stats.streams_cancelled == 1 and llm.stats.tokens_yielded == 10


def test_an_effort_that_lets_the_llm_finish_keeps_its_answer_when_never_sufficient():
    llm_reply = " ".join(f"Step {i} adds one thing." for i in range(20)) + " The answer is \\boxed{7}."
    rule = StopRule({"medium": EffortSetting(32, threshold=0.5, finish=True)})
    llm, slm, t = make(llm_reply=llm_reply, slm_reply=" The answer is \\boxed{5}.", policy=ConstantPolicy(0.1),
                       rule=rule)
    deltas: list[str] = []
    r = t.solve(QUESTION, on_event=lambda e, p: deltas.append(p["text"]) if e == "answer_delta" else None)
    assert r.stop_reason == "llm_finished" and r.handover_tokens is None
    assert r.answer.answer == "7" and slm.stats.streams_started == 0
    # once the LLM is let finish, its tokens stream as answer text one by one
    assert "".join(deltas) == r.text and len(deltas) > len(tokenize(llm_reply)) - 40
    # checkpoint 0, then 32 only: no checkpoint after the budget, where the LLM was let finish
    assert [(c.llm_tokens >= 32, c.reason) for c in r.checkpoints[1:]] == [(True, "finish")]
    assert r.cost.models["llm"].generated_tokens == len(tokenize(llm_reply))
    # sufficient before the budget: the SLM still takes over there
    t2 = Tandem(llm, slm, policy=ConstantPolicy(0.9), rule=rule)
    assert t2.solve(QUESTION).stop_reason == "slm_alone"


def test_an_effort_that_never_hands_over_is_the_llm_alone_without_shadow_passes():
    rule = StopRule({"medium": EffortSetting(64, threshold=1.01, stage_thresholds={2: 1.5}, finish=True)})
    llm, slm, t = make(policy=ConstantPolicy(1.0), rule=rule)
    r = t.solve(QUESTION)
    alone = make()[2].solve(QUESTION, method="llm")  # fresh backends: the same cold cache
    assert r.stop_reason == "llm_finished" and r.handover_tokens is None and r.checkpoints == []
    assert r.text == alone.text and slm.stats.streams_started == 0
    assert r.cost.models["slm"].input_tokens == 0 and r.cost.flops_total == pytest.approx(alone.cost.flops_total)
    # one threshold a probability can reach, or no finish, and the checks run again
    for setting in (EffortSetting(64, threshold=1.01, stage_thresholds={1: 0.99}, finish=True),
                    EffortSetting(64, threshold=1.01)):
        _, _, t2 = make(policy=ConstantPolicy(0.0), rule=StopRule({"medium": setting}))
        assert t2.solve(QUESTION).checkpoints


def test_fixed_budget_never_lets_the_llm_finish_nor_reads_thresholds():
    rule = StopRule({"medium": EffortSetting(32, threshold=0.0, stage_thresholds={1: 0.0}, finish=True)})
    _, _, t = make(policy=ConstantPolicy(0.1), rule=rule)
    r = t.solve(QUESTION, method="fixed:16")
    assert r.stop_reason == "budget" and 16 <= r.handover_tokens < 32


def test_hint_mode_hands_over_at_the_budget_even_where_the_effort_would_let_the_llm_finish():
    rule = StopRule({"medium": EffortSetting(32, threshold=0.5, finish=True)})
    _, slm, t = make(policy=ConstantPolicy(0.1), rule=rule)
    r = t.solve(QUESTION, handover="hint")
    assert r.stop_reason == "budget" and r.handover_tokens >= 32 and slm.stats.streams_started == 1
