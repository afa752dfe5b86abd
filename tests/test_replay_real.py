"""Replay against live on a real model pair (SmolLM2-135M in both roles through llama.cpp).

The probe records, per problem, what each method would do; replaying must give what a live run
gives. Under greedy decoding that holds exactly wherever the probe computes the SLM's cache the way
the live run does: `llm` always, and `tandem` runs (the probe mirrors their shadow passes). `slm`
and `fixed:N` run live on a cold SLM cache while the probe solves on the cache its scoring filled;
llama.cpp's logits differ slightly with how a prompt is batched, so their SLM text may part at a
near-tie (docs/RESULTS.md measures how often). Their LLM side and every hand-over point still agree.
"""

from __future__ import annotations

import pytest

from tandem import Tandem
from tandem.bench.graders import get_grader
from tandem.bench.probe import ProbeConfig, Prober
from tandem.bench.replay import PairParams, replay
from tandem.pipeline import DecodingSettings, PipelineConfig
from tandem.policy import EffortSetting, StopRule
from tandem.types import Problem

pytestmark = [pytest.mark.real, pytest.mark.slow]

PROBLEMS = [
    Problem("p0", "A farmer has 12 cows and buys 30 more. How many cows does the farmer have now?", "42", "math"),
    Problem("p1", "Sara reads 15 pages a day. How many pages does she read in a week?", "105", "math"),
]
BUDGETS = (16, 32)
DECODING = DecodingSettings(llm_max_tokens=48, slm_max_tokens=48)


class AfterInsights:
    """Reads the features (so every checkpoint runs its shadow pass); sufficient after n insights."""

    name = "after-insights"

    def __init__(self, n: int) -> None:
        self.n = n

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.9 if features["n_insights"] >= self.n else 0.1


def test_replay_agrees_with_live_runs_on_a_real_pair(fresh_smol):
    llm, slm = fresh_smol(), fresh_smol()
    rule = StopRule({"low": EffortSetting(16, 0.5), "medium": EffortSetting(32, 0.5), "high": EffortSetting(32, 0.5),
                     "finish": EffortSetting(16, 0.5, finish=True)})  # never sufficient: the LLM finishes
    policy = AfterInsights(2)
    cfg = PipelineConfig(stage_budgets=BUDGETS, decoding=DECODING)
    p = PairParams(llm.info.n_params, slm.info.n_params)
    prober = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig(stage_budgets=BUDGETS, decoding=DECODING))
    checked = 0
    for problem in PROBLEMS:
        rec = prober.probe(problem)
        assert rec["checkpoints"], "the LLM wrote past the first budget"
        for method in ("llm", "tandem:low", "tandem:medium", "tandem:finish", "slm", "fixed:16", "fixed:32"):
            llm.reset_cache(), slm.reset_cache()
            pol = AfterInsights(99) if method == "tandem:finish" else policy
            if method.startswith("tandem"):
                live = Tandem(llm, slm, policy=pol, rule=rule, config=cfg).solve(
                    problem.question, effort=method.split(":")[1])
            else:
                live = Tandem(llm, slm, config=cfg).solve(problem.question, method=method)
            rep = replay(rec, method, p, policy=pol, rule=rule, budgets=BUDGETS)
            assert rep.handover_tokens == live.handover_tokens, method
            assert rep.llm_generated_tokens == live.cost.models["llm"].generated_tokens, method
            if method in ("slm", "fixed:16", "fixed:32"):
                continue  # cold SLM cache live: see the module docstring
            assert rep.answer == live.answer.answer, method
            assert rep.slm_generated_tokens == live.cost.models["slm"].generated_tokens, method
            assert rep.slm_prompt_tokens == live.cost.models["slm"].input_tokens, method
            assert rep.flops_total == pytest.approx(live.cost.flops_total), method
            # the features a live run decides on are those the probe stored for training (same code, same passes)
            stored = [rec["ck0"]["features"]] + [ck["features"] for ck in rec["checkpoints"]]
            for ck in live.checkpoints:
                assert set(ck.features) == set(stored[ck.stage]), (method, ck.stage)
                for name, value in ck.features.items():
                    assert value == pytest.approx(stored[ck.stage][name], rel=1e-6, abs=1e-9), (method, name)
            checked += 1
    assert checked == 4 * len(PROBLEMS)
