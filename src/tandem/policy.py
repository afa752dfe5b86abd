"""Stop policies and the one place where a probability becomes a hand-over decision.

A `StopPolicy` (see `tandem.types`) only estimates the probability that the insights so far
suffice. `StopRule` turns it into a decision per effort level: hand over when the probability
reaches the effort's threshold (per stage where calibrated), and at the latest at the first
checkpoint after the effort's largest budget - unless the effort lets the LLM finish there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from .types import PolicyBase

if TYPE_CHECKING:
    from .decision import CheckpointEvent

Effort = Literal["low", "medium", "high"]
EFFORTS: tuple[Effort, ...] = ("low", "medium", "high")
DEFAULT_STAGE_BUDGETS: tuple[int, ...] = (32, 64, 128, 192, 256)


@dataclass(frozen=True)
class EffortSetting:
    """`max_budget`: LLM tokens after which the next checkpoint hands over whatever the policy says.
    `threshold`: hand over earlier when the sufficiency probability reaches it; `stage_thresholds`
    overrides it per checkpoint stage (index into the stage budgets, 0 = before the LLM starts).
    `finish`: at the budget, an insufficient prefix is not handed over: the LLM finishes the
    solution itself, so the SLM takes over only where it is judged able. Continue hand-over only:
    in hint mode the pipeline hands over at the budget as without it."""

    max_budget: int
    threshold: float = 1.01  # above 1: never early (pure budget)
    stage_thresholds: dict[int, float] = field(default_factory=dict)
    finish: bool = False
    at_thought_end: bool = False  # a reasoning LLM's closed thought hands over whatever the policy says

    def threshold_at(self, stage: int) -> float:
        return self.stage_thresholds.get(stage, self.threshold)

    @property
    def hands_over(self) -> bool:
        """False when no probability reaches a threshold and the LLM finishes at the budget: the effort
        is then the LLM alone, and checking sufficiency would only add cost."""
        return not self.finish or min((self.threshold, *self.stage_thresholds.values())) <= 1.0


@dataclass(frozen=True)
class Decision:
    handover: bool
    reason: Literal["sufficient", "budget", "finish", "continue", "thought_end", "llm_finished"]
    threshold: float


AFTER_THOUGHT = EffortSetting(max_budget=2**31 - 1, at_thought_end=True)
"""The `afterthink` baseline: the LLM thinks until it closes its thought, the SLM writes the answer."""

BUDGET_EFFORTS: dict[str, EffortSetting] = {
    "low": EffortSetting(max_budget=64),
    "medium": EffortSetting(max_budget=128),
    "high": EffortSetting(max_budget=256),
}


@dataclass(frozen=True)
class StopRule:
    efforts: dict[str, EffortSetting] = field(default_factory=lambda: dict(BUDGET_EFFORTS))

    def setting(self, effort: str) -> EffortSetting:
        try:
            return self.efforts[effort]
        except KeyError:
            raise ValueError(f"unknown effort {effort!r}: choose one of {sorted(self.efforts)}") from None

    def decide(self, probability: float, *, effort: str, stage: int, llm_tokens: int,
               thought_end: bool | None = None) -> Decision:
        """This rule's decision at one checkpoint of a continue-mode solve (`tandem.decision.decide`, where
        the hand-over mode and the LLM's thought are given too). `thought_end`: the checkpoint is where a
        reasoning LLM's thought ended: True when it closed it, False when its token limit cut it."""
        from .decision import CheckpointState, HandoverContext, decide

        event: CheckpointEvent = "budget" if thought_end is None else "thought_end"
        return decide(HandoverContext(self, effort, llm_thinks=thought_end is not None),
                      CheckpointState(stage, llm_tokens, probability, event, thought_end))

    def with_budget(self, effort: str, max_budget: int) -> StopRule:
        efforts = dict(self.efforts)
        self.setting(effort)  # an unknown effort is refused
        efforts[effort] = EffortSetting(max_budget)  # the budget alone: no thresholds, never finishes
        return StopRule(efforts)

    def with_max_budgets(self, budgets: dict[str, int]) -> StopRule:
        """The same rule with these efforts' largest budgets (their thresholds kept)."""
        efforts = dict(self.efforts)
        for effort, budget in budgets.items():
            efforts[effort] = replace(self.setting(effort), max_budget=int(budget))
        return StopRule(efforts)

    def without_finish(self) -> StopRule:
        """The same rule handing over at every budget (where the LLM cannot be let finish: hint mode)."""
        return StopRule({e: replace(s, finish=False) for e, s in self.efforts.items()})


class BudgetPolicy(PolicyBase):
    """Never judges the insights sufficient: hand-over happens at the effort's budget.

    This is the `fixed:N` method and the default until a trained classifier is installed.
    """

    name = "budget"
    uses_shadow = False  # features are not needed: the pipeline skips the SLM's shadow passes

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.0


class ConstantPolicy(PolicyBase):
    """Always returns the same probability (tests, and the `slm` router extreme)."""

    def __init__(self, p: float) -> None:
        self.name = f"constant:{p}"
        self._p = p

    def sufficiency(self, features: dict[str, float]) -> float:
        return self._p
