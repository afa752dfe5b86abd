"""The one place where a hand-over is decided.

`decide` reads one checkpoint (where the LLM's stream stands, what the policy estimated, whether the
LLM's thought ended there or its stream ended) under one `HandoverContext` (the stop rule, the
effort, the hand-over mode, whether the LLM reasons) and says: hand over here, go on, or let the LLM
finish its own answer. `HandoverWalk` applies it checkpoint after checkpoint and knows which
checkpoints a solve still visits. The live loop (`tandem.pipeline`), replay of probe tables
(`tandem.bench.replay`) and calibration (which scores candidate rules by replay) all decide through
these two, so a rule changed here changes every path at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from .checkpoints import stage_budgets_for
from .policy import Decision, EffortSetting, StopRule

CheckpointEvent = Literal["start", "budget", "thought_end", "stream_end"]
"""What put a checkpoint where it is: `start` before the LLM writes (stage 0), `budget` the first insight
boundary after a stage budget, `thought_end` a reasoning LLM's thought ending (closed by `</think>`, or
cut by its token limit), `stream_end` the LLM's stream ending before any hand-over."""


@dataclass(frozen=True)
class HandoverContext:
    """Everything a decision depends on besides the checkpoint itself."""

    rule: StopRule
    effort: str
    handover: str = "continue"  # continue | conclude | hint
    llm_thinks: bool = False  # the LLM is a reasoning model: its thought is what is handed over

    @property
    def llm_solves(self) -> bool:
        """Whether the LLM writes a solution of its own (and may be let finish it): in every mode when it
        reasons, else not in hint mode, where it writes GPRA insights only."""
        return self.handover != "hint" or self.llm_thinks

    @property
    def setting(self) -> EffortSetting:
        """The effort's setting as this context applies it: where the LLM writes no solution of its own,
        `finish` cannot apply and every budget hands over."""
        s = self.rule.setting(self.effort)
        return s if self.llm_solves or not s.finish else replace(s, finish=False)

    @property
    def llm_alone(self) -> bool:
        """The effort never hands over: the solve is the LLM alone, and no checkpoint is worth paying for."""
        return not self.setting.hands_over

    def stage_budgets(self, budgets: tuple[int, ...]) -> list[int]:
        """The stage budgets this effort visits out of `budgets` (its largest budget last)."""
        return stage_budgets_for(budgets, self.setting.max_budget)


@dataclass(frozen=True)
class CheckpointState:
    """One checkpoint as a decision reads it. `probability`: the policy's estimate that the guidance so far
    suffices (None where nothing was scored: the end of the LLM's stream); `probabilities`: the earlier
    checkpoints' estimates of this solve, oldest first; `thought_closed`: at a `thought_end`, whether
    the LLM closed its thought (True) or its token limit cut it (False)."""

    stage: int
    llm_tokens: int
    probability: float | None
    event: CheckpointEvent = "budget"
    thought_closed: bool | None = None
    probabilities: tuple[float, ...] = field(default=())


def decide(ctx: HandoverContext, ck: CheckpointState) -> Decision:
    """Hand over (`handover`), go on (`continue`), or let the LLM finish its own answer (`finish`; no later
    checkpoint is visited but a cut thought's). In order: a probability that reaches the stage's
    threshold hands over; a cut thought hands over (the LLM cannot answer), a closed one where the
    effort says so; the end of the stream leaves the LLM's answer standing where it wrote one, else the
    SLM takes every insight; past the effort's largest budget, the budget hands over unless the effort
    lets the LLM finish."""
    s = ctx.setting
    thr = s.threshold_at(ck.stage)
    if ck.probability is not None and ck.probability >= thr:
        return Decision(True, "sufficient", thr)
    if ck.event == "thought_end":
        closed = bool(ck.thought_closed)
        if s.at_thought_end or not closed or (ck.llm_tokens >= s.max_budget and not s.finish):
            return Decision(True, "thought_end", thr)
        return Decision(False, "finish", thr)
    if ck.event == "stream_end":
        return Decision(not ctx.llm_solves, "llm_finished", thr)
    if ck.llm_tokens >= s.max_budget:
        return Decision(False, "finish", thr) if s.finish else Decision(True, "budget", thr)
    return Decision(False, "continue", thr)


class HandoverWalk:
    """The decisions of one solve, checkpoint after checkpoint. After a `finish` the LLM writes on and no
    checkpoint is visited, but one where its token limit cuts its thought (the SLM then concludes);
    budget checkpoints beyond the effort's largest budget are never visited."""

    def __init__(self, ctx: HandoverContext, n_stages: int) -> None:
        self.ctx, self.n_stages = ctx, n_stages
        self.finishing = False
        self.decisions: list[Decision] = []
        self._probabilities: list[float] = []

    def visits(self, event: CheckpointEvent, stage: int, thought_closed: bool | None = None) -> bool:
        """Whether this solve decides at a checkpoint of this kind and stage."""
        if event == "thought_end" and thought_closed is False:
            return True
        if self.finishing:
            return False
        return event != "budget" or stage <= self.n_stages

    def step(self, stage: int, llm_tokens: int, probability: float | None, event: CheckpointEvent = "budget",
             thought_closed: bool | None = None) -> Decision:
        """Decide at one checkpoint (`decide`), remembering the probabilities so far and a `finish`."""
        d = decide(self.ctx, CheckpointState(stage, llm_tokens, probability, event, thought_closed,
                                             tuple(self._probabilities)))
        if probability is not None:
            self._probabilities.append(probability)
        self.decisions.append(d)
        if d.reason == "finish":
            self.finishing = True
        return d

    def end(self, llm_tokens: int) -> Decision:
        """The LLM's stream ended with no hand-over: its answer stands where it wrote one (always after a
        `finish`), else the SLM takes every insight."""
        if self.finishing:
            d = Decision(False, "llm_finished", self.ctx.setting.threshold_at(0))
            self.decisions.append(d)
            return d
        return self.step(0, llm_tokens, None, "stream_end")


def route_context(threshold: float) -> HandoverContext:
    """The route baseline's one decision, at checkpoint 0: the SLM alone when the probability reaches
    `threshold`, else the LLM alone (a budget of one token: nothing but the threshold hands over)."""
    return HandoverContext(StopRule({"route": EffortSetting(max_budget=1, threshold=threshold)}), "route")
