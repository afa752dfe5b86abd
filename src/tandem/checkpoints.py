"""Where checkpoints fall and what a checkpoint reads: helpers shared by the live loop, the probe and
replay (one schedule, one shadow span, one rule for a reasoning LLM's thought)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .prompts import DEFAULT_TEXTS, hint_prefix_length
from .segment import InsightSegmenter, InsightUnit
from .types import ScoreResult, TokenStep

__all__ = ["THINK_CLOSE", "THINK_OPEN", "THINK_SEP", "CheckpointFinder", "CheckpointMark", "CheckpointSchedule",
           "question_steps",
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


@dataclass(frozen=True)
class CheckpointMark:
    """A checkpoint in the LLM's stream: its stage, the LLM's tokens so far, where the text handed over ends
    (`prefix_chars`: whole insight units, or the thought without its closing tag), the units in it, and
    whether it is a stage budget's or the place where a reasoning LLM's thought ended (`thought_closed`:
    closed by its tag, or cut by its token limit)."""

    stage: int
    llm_tokens: int
    prefix_chars: int
    n_units: int
    event: Literal["budget", "thought_end"] = "budget"
    thought_closed: bool | None = None


class CheckpointFinder:
    """Finds the checkpoints of one LLM stream, token by token: the live loop and the probe both read a
    stream through it, so they see the same checkpoints. `passed()` after a budget checkpoint that did
    not hand over; `end()` when the stream ends. `closes_at`: where the thought's closing tag starts,
    when the whole stream is known beforehand (a probe), so the thought ends at the token where the tag
    starts; without it, at the token that completes the tag (live: the tag may take several tokens)."""

    def __init__(self, budgets: list[int], max_unit_tokens: int, segmenter: InsightSegmenter, *,
                 thinks: bool = False, closes_at: int | None = None) -> None:
        self.schedule = CheckpointSchedule(budgets, max_unit_tokens)
        self.seg, self.thinks, self.closes_at = segmenter, thinks, closes_at
        self.text, self.n_tokens, self.closed_at = "", 0, -1
        self.new_units: list[InsightUnit] = []  # the units the last token completed

    @property
    def stage(self) -> int:
        return self.schedule.stage

    def feed(self, piece: str) -> CheckpointMark | None:
        """Read the next token's text; the checkpoint that falls at it, if any."""
        before = len(self.text)
        self.text += piece
        self.n_tokens += 1
        self.new_units = []
        if self.closed_at >= 0:  # after the thought: the LLM answers, no more checkpoints
            return None
        if self.thinks:
            if self.closes_at is not None:  # known beforehand: the tag starts in this token or not
                close = self.closes_at if len(self.text) > self.closes_at else -1
            else:  # seen as it comes: the tag is complete in the text (it may end in this token)
                close = self.text.find(THINK_CLOSE, max(0, before - len(THINK_CLOSE)))
            if close >= 0:
                self.closed_at = close
                self.new_units = self.seg.feed(self.text[before:close] if close > before else "", self.n_tokens)
                self.new_units += self.seg.flush(self.n_tokens)
                return CheckpointMark(self.schedule.stage, self.n_tokens, close, len(self.seg.units),
                                      "thought_end", True)
        self.new_units = self.seg.feed(piece, self.n_tokens)
        stage = self.schedule.due(self.n_tokens, bool(self.new_units))
        if stage is None:
            return None
        end = len(self.text) - len(self.seg.pending) if self.new_units else len(self.text)
        return CheckpointMark(stage, self.n_tokens, end, len(self.seg.units))

    def passed(self) -> None:
        """The budget checkpoint just found did not hand over: on to the next stage budget."""
        self.schedule.passed(self.n_tokens)

    def end(self) -> CheckpointMark | None:
        """The stream ended: the pending text closes a unit; a reasoning LLM's thought that never closed
        was cut by its token limit, and that is a last checkpoint (the SLM concludes from it)."""
        if self.closed_at >= 0:
            return None
        self.new_units = self.seg.flush(self.n_tokens)
        if self.thinks and self.n_tokens:
            return CheckpointMark(self.schedule.stage, self.n_tokens, len(self.text), len(self.seg.units),
                                  "thought_end", False)
        return None
