"""Versioned prompt templates for the LLM (coordinator) and the SLM (executor).

Every template carries a version string; runs store it in their manifest, so a change of wording
is a change of identity (prompt wording alone moves small-model accuracy by tens of points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .types import Message, Prompt

Task = Literal["math", "code"]
HandoverMode = Literal["continue", "conclude", "hint"]
HANDOVER_MODES: tuple[str, ...] = ("continue", "conclude", "hint")

PROMPT_VERSION = "v1"

_SOLVE_SYSTEM: dict[Task, str] = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "code": (
        "Please reason step by step about the task, then write the complete solution as one "
        "```python code block that defines the requested function."
    ),
}

_GPRA_SYSTEM = (
    "You are a mentor guiding a student who will solve the problem on their own. Do not solve it "
    "and compute no numbers. Write a short [Thinking Insights] block with these headings, one or "
    "two short lines under each:\n"
    "Goal: what exactly is asked.\n"
    "Planning: the route to the answer, step by step.\n"
    "Retrieval: facts, formulas or APIs that apply.\n"
    "Action: the concrete next steps to carry out.\n"
    "Stop after the Action lines."
)

_HINT_GUIDE = (
    "\n\nA mentor wrote the insights below to guide you. They outline the route; they do not do "
    "the work. Carry out every step and calculation yourself, then give the final answer.\n"
    "[Thinking Insights]\n"
)

CONCLUDE_NUDGE = (
    "\n\nI have thought about this enough. Now I will write the solution briefly and give the final "
    "answer within \\boxed{}.\n\n"
)
"""`conclude` hand-over: appended to the LLM's reasoning so that the SLM finishes instead of thinking on."""

TRIAL_NUDGE = "\n\nSo the final answer is \\boxed{"
"""Trial answer at a checkpoint: the SLM writes the box's content at once (a few tokens)."""

_CODE_SUFFIX = "Complete the following Python function:\n```python\n{prompt}```"


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one method for one task."""

    task: Task
    version: str = PROMPT_VERSION

    def solve(self, question: str) -> Prompt:
        """The plain "reason step by step" prompt: SLM alone, LLM alone, and continue mode."""
        return Prompt(
            messages=(
                Message("system", _SOLVE_SYSTEM[self.task]),
                Message("user", self.question_text(question)),
            )
        )

    def continue_from(self, question: str, llm_prefix: str) -> Prompt:
        """The SLM continues the assistant turn the LLM started."""
        return Prompt(messages=self.solve(question).messages, assistant_prefix=llm_prefix)

    def handover(self, question: str, llm_text: str, mode: str) -> Prompt:
        """The SLM's prompt after a hand-over of `llm_text` (a reasoning LLM's thought, tags removed,
        re-rendered under the SLM's own chat template, or a non-reasoning LLM's text)."""
        if mode == "continue":
            return self.continue_from(question, llm_text)
        if mode == "conclude":
            return self.continue_from(question, llm_text + CONCLUDE_NUDGE)
        return self.with_hint(question, llm_text) if llm_text else self.solve(question)

    def trial(self, question: str, llm_text: str, mode: str) -> Prompt:
        """A trial answer's prompt: the hand-over prompt (read as its shadow pass reads it) and then the
        trial nudge, which opens a box for the SLM to fill at once."""
        if mode == "hint" or not llm_text:
            base = self.with_hint(question, llm_text) if mode == "hint" and llm_text else self.solve(question)
            return Prompt(base.messages, TRIAL_NUDGE.lstrip())
        return self.continue_from(question, llm_text + TRIAL_NUDGE)

    def coordinator(self, question: str) -> Prompt:
        """Hint mode: the LLM writes GPRA insights instead of a solution."""
        return Prompt(
            messages=(Message("system", _GPRA_SYSTEM), Message("user", self.question_text(question)))
        )

    def with_hint(self, question: str, insights: str) -> Prompt:
        """Hint mode: the SLM solves with the insights at the end of its user message.

        The insights come last so that the prompt rendered for fewer insights is a text prefix of
        the prompt for more: the SLM's shadow pass extends its cache instead of recomputing it.
        """
        content = self.question_text(question) + _HINT_GUIDE + insights
        return Prompt(messages=(Message("system", _SOLVE_SYSTEM[self.task]), Message("user", content)))

    def question_text(self, question: str) -> str:
        if self.task == "code":
            return _CODE_SUFFIX.format(prompt=question.strip("\n") + "\n").lstrip()
        return question.strip()

    def identity(self) -> dict[str, str]:
        return {"prompt_version": self.version, "task": self.task}


def hint_prefix_length(rendered: str, insights: str) -> int:
    """Character index just after the insights in a rendered hint prompt (for shadow scoring)."""
    if not insights:
        idx = rendered.rfind(_HINT_GUIDE.rstrip("\n"))
        return idx + len(_HINT_GUIDE) if idx >= 0 else len(rendered)
    idx = rendered.rfind(insights)
    if idx < 0:
        raise ValueError("insights not found in the rendered prompt")
    return idx + len(insights)
