"""Where checkpoints fall and what a checkpoint reads: helpers shared by the live loop, the probe and
replay (one schedule, one shadow span, one rule for a reasoning LLM's thought)."""

from __future__ import annotations

from .prompts import DEFAULT_TEXTS, hint_prefix_length
from .types import ScoreResult, TokenStep

__all__ = ["THINK_CLOSE", "THINK_OPEN", "THINK_SEP", "CheckpointSchedule", "question_steps",
           "route_without_classifier", "shadow_mode", "shadow_span", "stage_budgets_for", "thought_of"]

THINK_OPEN, THINK_CLOSE = "<think>\n", "</think>"
THINK_SEP = "\n</think>\n\n"
"""A reasoning LLM's part of a tandem text is its thought: the final text reads `<think>\n` + thought
+ `THINK_SEP` + the SLM's answer, so graders read the answer after `</think>`, from the SLM's part only."""


def route_without_classifier(threshold: float) -> str | None:
    """The role a route threshold picks whatever the probability (in [0, 1]) is, else None."""
    if threshold > 1.0:
        return "llm"
    if threshold <= 0.0:
        return "slm"
    return None


def shadow_mode(handover: str) -> str:
    """How a shadow pass reads a hand-over mode's prompt: `conclude` scores the LLM's text as `continue`
    does (its nudge comes only at the hand-over)."""
    return "hint" if handover == "hint" else "continue"


def thought_of(llm_text: str) -> str:
    """A reasoning LLM's thought: its text up to `</think>` (the whole text while the thought is open)."""
    i = llm_text.find(THINK_CLOSE)
    return llm_text if i < 0 else llm_text[:i]


def shadow_span(rendered: str, base_text: str, llm_text: str, handover: str,
                guide: str = DEFAULT_TEXTS.hint_guide) -> tuple[str, int]:
    """What a shadow pass scores of the SLM's rendered hand-over prompt, and where the insights start in
    it. Continue mode scores the whole prompt (the LLM's text follows `base_text`, the rendered solve
    prompt); hint mode scores up to the end of the insights; without insights, the whole prompt."""
    if handover != "hint" or not llm_text:
        return rendered, len(base_text) if llm_text else len(rendered)
    end = hint_prefix_length(rendered, llm_text, guide)
    return rendered[:end], end - len(llm_text)


def question_steps(scored: ScoreResult, text: str, question: str) -> list[TokenStep]:
    """The scored steps of the question's own tokens within `text` (empty if it is not found)."""
    q = question.strip()
    qpos = text.rfind(q)  # the last occurrence: a conversation may have asked it before
    if qpos < 0:
        return []
    return [s for s, o in zip(scored.steps, scored.offsets, strict=True) if qpos <= o < qpos + len(q)]


class CheckpointSchedule:
    """Where checkpoints fall: at the first insight boundary after each stage budget, or
    `max_unit_tokens` after the budget when no boundary comes. Shared by live runs and probes."""

    def __init__(self, budgets: list[int], max_unit_tokens: int) -> None:
        self.budgets, self.max_unit_tokens, self.stage = budgets, max_unit_tokens, 1

    def due(self, n_tokens: int, at_boundary: bool) -> int | None:
        """The stage whose checkpoint falls at this token, if any."""
        if self.stage > len(self.budgets) or n_tokens < self.budgets[self.stage - 1]:
            return None
        if at_boundary or n_tokens - self.budgets[self.stage - 1] >= self.max_unit_tokens:
            return self.stage
        return None

    def passed(self, n_tokens: int) -> None:
        """A checkpoint at `n_tokens` did not hand over: the next stage is the first budget beyond it."""
        self.stage = 1 + sum(1 for b in self.budgets if b <= n_tokens)


def stage_budgets_for(budgets: tuple[int, ...], max_budget: int) -> list[int]:
    return sorted({b for b in budgets if b < max_budget} | {max_budget})
