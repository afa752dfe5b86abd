"""Optional members of backends and policies are declared (`BackendBase`, `PolicyBase`) and read
through `tandem.capabilities`; a third-party backend or policy that implements only the Protocol, with
no base class, still runs a solve, a probe and an evaluation's concurrency plan."""

from __future__ import annotations

import re
from collections.abc import Generator

import pytest

from tandem import ConfigError, Tandem, capabilities
from tandem.backends.llamacpp import LlamaCppBackend
from tandem.backends.openai_http import OpenAIBackend
from tandem.backends.recorded import RecordedBackend
from tandem.backends.scripted import ScriptedBackend
from tandem.bench.graders import get_grader
from tandem.bench.probe import ProbeConfig, Prober
from tandem.bench.runner import max_concurrency
from tandem.classifier import SufficiencyClassifier
from tandem.policy import BudgetPolicy, ConstantPolicy, EffortSetting, StopRule
from tandem.types import (
    Backend,
    BackendBase,
    Capabilities,
    GenerationRequest,
    ModelInfo,
    PolicyBase,
    Problem,
    Prompt,
    ScoreResult,
    TokenStep,
    TokenStream,
    Usage,
)

WORDS = re.compile(r"\s*\S+|\s+")


class ProtocolOnlyBackend:
    """A third-party backend written against the `Backend` Protocol alone: no base class, none of the
    optional members (`max_in_flight`, `reset_cache`, `tokenize`)."""

    def __init__(self, reply: str, name: str, n_params: int) -> None:
        self.reply = reply
        self._info = ModelInfo(name=name, n_params=n_params, n_ctx=8192, tokenizer_id="words",
                               chat_template_id="plain", capabilities=Capabilities(score=True))

    @property
    def info(self) -> ModelInfo:
        return self._info

    def render(self, prompt: Prompt) -> str:
        return "".join(f"[{m.role}] {m.content}\n" for m in prompt.messages) + "[assistant] " + prompt.assistant_prefix

    def stream(self, request: GenerationRequest) -> TokenStream:
        usage = Usage(prompt_tokens=len(WORDS.findall(self.render(request.prompt))))
        usage.computed_prompt_tokens = usage.prompt_tokens

        def gen() -> Generator[TokenStep, None, str]:
            words = WORDS.findall(self.reply)
            for w in words[: request.max_tokens]:
                usage.generated_tokens += 1
                yield TokenStep(w, -0.5, 1.0)
            return "stop" if len(words) <= request.max_tokens else "length"

        return TokenStream(gen(), usage)

    def score(self, text: str) -> ScoreResult:
        toks = WORDS.findall(text)
        offsets, pos = [], 0
        for t in toks:
            offsets.append(pos)
            pos += len(t)
        steps = [TokenStep(t, None if i == 0 else -1.0, None if i == 0 else 1.5) for i, t in enumerate(toks)]
        return ScoreResult(steps, offsets, Usage(len(toks), len(toks), 0, 0, 0.0))

    def close(self) -> None:
        pass


class ProtocolOnlyPolicy:
    """A third-party stop policy: a name and `sufficiency`, nothing else."""

    name = "third-party"

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.9 if features.get("n_insights", 0) >= 2 else 0.1


LLM_REPLY = " ".join(f"Step {i} adds one." for i in range(30)) + " The answer is \\boxed{7}."
RULE = StopRule({e: EffortSetting(b, 0.5) for e, b in (("low", 8), ("medium", 16), ("high", 32))})


def third_party_pair() -> tuple[ProtocolOnlyBackend, ProtocolOnlyBackend]:
    return (ProtocolOnlyBackend(LLM_REPLY, "big", 1_500_000_000),
            ProtocolOnlyBackend(" So the answer is \\boxed{7}.", "small", 500_000_000))


def test_a_protocol_only_backend_is_a_backend_without_the_base_class() -> None:
    llm, _ = third_party_pair()
    assert isinstance(llm, Backend) and not isinstance(llm, BackendBase)
    for member in ("max_in_flight", "reset_cache", "tokenize"):
        assert not hasattr(llm, member)


def test_the_helpers_give_a_protocol_only_backend_and_policy_the_base_defaults() -> None:
    llm, _ = third_party_pair()
    policy = ProtocolOnlyPolicy()
    base, pbase = BackendBase(), PolicyBase()
    assert capabilities.max_in_flight(llm) == base.max_in_flight == 1
    assert capabilities.reset_cache(llm) is None
    assert capabilities.tokenize(llm, "a b") is None and base.tokenize("a b") is None
    assert capabilities.uses_shadow(policy) is pbase.uses_shadow is True
    assert capabilities.route_threshold(policy) is None and pbase.route_threshold is None
    assert capabilities.cascade_threshold(policy) is None and pbase.cascade_threshold is None


def test_the_helpers_read_what_a_backend_or_policy_declares() -> None:
    scripted = ScriptedBackend("a b", max_in_flight=None)
    assert capabilities.max_in_flight(scripted) is None
    assert capabilities.tokenize(scripted, "a b") == ["a", " b"]
    scripted.score("a b c")  # fills its prefix cache
    assert scripted._cache
    capabilities.reset_cache(scripted)
    assert scripted._cache == []
    assert capabilities.uses_shadow(BudgetPolicy()) is False

    class Calibrated:  # declares the members without the base class
        name, uses_shadow, route_threshold, cascade_threshold = "c", False, 0.7, -1.5

        def sufficiency(self, features: dict[str, float]) -> float:
            return 0.5

    c = Calibrated()
    assert (capabilities.uses_shadow(c), capabilities.route_threshold(c), capabilities.cascade_threshold(c)) == (
        False, 0.7, -1.5)


def test_the_projects_backends_and_policies_inherit_the_bases() -> None:
    for cls in (ScriptedBackend, LlamaCppBackend, OpenAIBackend, RecordedBackend):
        assert issubclass(cls, BackendBase), cls
    for pcls in (BudgetPolicy, ConstantPolicy, SufficiencyClassifier):
        assert issubclass(pcls, PolicyBase), pcls
    assert (OpenAIBackend.max_in_flight, RecordedBackend.max_in_flight, LlamaCppBackend.max_in_flight) == (None, None, 1)


@pytest.mark.parametrize("method", ["tandem", "slm", "llm", "fixed:8", "route"])
def test_a_third_party_backend_and_policy_run_a_solve(method: str) -> None:
    llm, slm = third_party_pair()
    result = Tandem(llm, slm, policy=ProtocolOnlyPolicy(), rule=RULE).solve("What is 3 + 4?", method=method)
    assert result.answer.answer == "7", (method, result.text)
    assert result.cost.flops_total > 0


def test_a_third_party_policy_without_a_cascade_threshold_is_refused_for_cascade() -> None:
    llm, slm = third_party_pair()
    with pytest.raises(ConfigError, match="cascade"):
        Tandem(llm, slm, policy=ProtocolOnlyPolicy(), rule=RULE).solve("What is 3 + 4?", method="cascade")


def test_a_third_party_backend_runs_a_probe_and_plans_one_call_at_a_time() -> None:
    llm, slm = third_party_pair()
    rec = Prober(llm, slm, get_grader("gsm8k"), ProbeConfig(stage_budgets=(8, 16))).probe(
        Problem(id="1", question="What is 3 + 4?", answer="7"))
    assert rec["slm_alone"]["grade"]["correct"] and rec["llm"]["grade"]["correct"]
    assert [c["stage"] for c in rec["checkpoints"]] == [1, 2]
    assert max_concurrency(llm, slm) == 1
