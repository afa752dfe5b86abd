"""Versioned prompt templates for the LLM (coordinator) and the SLM (executor).

Every template carries a version string; runs store it in their manifest, so a change of wording
is a change of identity (prompt wording alone moves small-model accuracy by tens of points).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

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
class PromptTexts:
    """Every wording tandem puts around a question. The defaults are prompt version `v1`; a prompt file
    (`load_prompt_texts`) replaces any of them, and its hash becomes the runs' prompt version.
    A solve system prompt of None sends none (some reasoning models are best run without one)."""

    solve_system_math: str | None = _SOLVE_SYSTEM["math"]
    solve_system_code: str | None = _SOLVE_SYSTEM["code"]
    coordinator_system: str = _GPRA_SYSTEM
    hint_guide: str = _HINT_GUIDE
    conclude_nudge: str = CONCLUDE_NUDGE
    trial_nudge: str = TRIAL_NUDGE
    code_template: str = _CODE_SUFFIX
    source: str = field(default="", compare=False)  # the file they came from, for messages

    @property
    def version(self) -> str:
        if self == DEFAULT_TEXTS:
            return PROMPT_VERSION
        body = json.dumps({k: v for k, v in asdict(self).items() if k != "source"}, sort_keys=True)
        return "custom-" + hashlib.sha256(body.encode()).hexdigest()[:12]


DEFAULT_TEXTS = PromptTexts()
_TEXT_KEYS = tuple(f.name for f in fields(PromptTexts) if f.name != "source")


def load_prompt_texts(path: str | Path) -> PromptTexts:
    """Prompt wordings from a TOML or YAML file: any of `solve_system_math`, `solve_system_code` (a string,
    or false for no system prompt), `coordinator_system`, `hint_guide`, `conclude_nudge`, `trial_nudge`,
    `code_template` (with `{prompt}`), at the top level or under `[prompts]`; unknown keys are an error."""
    from .config import read_settings_file
    from .errors import ConfigError

    data: dict[str, Any] = read_settings_file(Path(path))
    if set(data) == {"prompts"} and isinstance(data["prompts"], dict):
        data = data["prompts"]
    unknown = sorted(set(data) - set(_TEXT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown prompt key(s) {', '.join(unknown)}; known: {', '.join(_TEXT_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key.startswith("solve_system") and value is False:
            out[key] = None
        elif not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key} must be a non-empty string" +
                              (" (or false for none)" if key.startswith("solve_system") else ""))
        else:
            out[key] = value
    if "code_template" in out and "{prompt}" not in out["code_template"]:
        raise ConfigError(f"{path}: code_template must contain {{prompt}}")
    if "trial_nudge" in out and not out["trial_nudge"].rstrip().endswith("\\boxed{"):
        raise ConfigError(f"{path}: trial_nudge must end by opening a box: ...\\boxed{{")
    return PromptTexts(**out, source=str(path))


def strip_thoughts(text: str) -> str:
    """An earlier assistant turn as a reasoning API expects it back: without its `<think>` blocks (and
    without a thought its template opened, up to `</think>`)."""
    import re

    out = re.sub(r"<think>.*?</think>\s*", "", text, flags=re.DOTALL)
    if "</think>" in out:  # the template opened the thought: the turn starts inside it
        out = out.rsplit("</think>", 1)[1]
    return out.lstrip() if out != text else text


@dataclass(frozen=True)
class Conversation:
    """What comes before the question in a multi-turn chat: the client's system text and the earlier
    turns (thoughts stripped). The rule: tandem's system prompt for the task first, then a blank line
    and the client's system / developer messages; then the earlier user and assistant turns as turns;
    then the question, which is the last user message."""

    system: str = ""
    turns: tuple[Message, ...] = ()

    @classmethod
    def from_messages(cls, messages: Sequence[Message]) -> tuple[Conversation, str]:
        """Split a chat into what comes before the question and the question (the last user message)."""
        from .errors import InputError

        if not messages or messages[-1].role != "user":
            raise InputError("the last message must be from the user (tandem answers one question)")
        system = "\n\n".join(m.content.strip() for m in messages[:-1]
                             if m.role in ("system", "developer") and m.content.strip())
        turns = tuple(Message(m.role, strip_thoughts(m.content) if m.role == "assistant" else m.content)
                      for m in messages[:-1] if m.role in ("user", "assistant"))
        return cls(system, turns), messages[-1].content


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one method for one task (after the earlier turns of a conversation, if any)."""

    task: Task
    texts: PromptTexts = DEFAULT_TEXTS
    conversation: Conversation = Conversation()

    @property
    def version(self) -> str:
        return self.texts.version

    def _system(self) -> tuple[Message, ...]:
        own = self.texts.solve_system_math if self.task == "math" else self.texts.solve_system_code
        text = "\n\n".join(t for t in (own, self.conversation.system) if t)
        return ((Message("system", text),) if text else ()) + self.conversation.turns

    def solve(self, question: str) -> Prompt:
        """The plain "reason step by step" prompt: SLM alone, LLM alone, and continue mode."""
        return Prompt(messages=(*self._system(), Message("user", self.question_text(question))))

    def continue_from(self, question: str, llm_prefix: str) -> Prompt:
        """The SLM continues the assistant turn the LLM started."""
        return Prompt(messages=self.solve(question).messages, assistant_prefix=llm_prefix)

    def handover(self, question: str, llm_text: str, mode: str) -> Prompt:
        """The SLM's prompt after a hand-over of `llm_text` (a reasoning LLM's thought, tags removed,
        re-rendered under the SLM's own chat template, or a non-reasoning LLM's text)."""
        if mode == "continue":
            return self.continue_from(question, llm_text)
        if mode == "conclude":
            return self.continue_from(question, llm_text + self.texts.conclude_nudge)
        return self.with_hint(question, llm_text) if llm_text else self.solve(question)

    def trial(self, question: str, llm_text: str, mode: str) -> Prompt:
        """A trial answer's prompt: the hand-over prompt (read as its shadow pass reads it) and then the
        trial nudge, which opens a box for the SLM to fill at once."""
        if mode == "hint" or not llm_text:
            base = self.with_hint(question, llm_text) if mode == "hint" and llm_text else self.solve(question)
            return Prompt(base.messages, self.texts.trial_nudge.lstrip())
        return self.continue_from(question, llm_text + self.texts.trial_nudge)

    def coordinator(self, question: str) -> Prompt:
        """Hint mode: the LLM writes GPRA insights instead of a solution."""
        system = "\n\n".join(t for t in (self.texts.coordinator_system, self.conversation.system) if t)
        return Prompt(messages=(Message("system", system), *self.conversation.turns,
                                Message("user", self.question_text(question))))

    def with_hint(self, question: str, insights: str) -> Prompt:
        """Hint mode: the SLM solves with the insights at the end of its user message.

        The insights come last so that the prompt rendered for fewer insights is a text prefix of
        the prompt for more: the SLM's shadow pass extends its cache instead of recomputing it.
        """
        content = self.question_text(question) + self.texts.hint_guide + insights
        return Prompt(messages=(*self._system(), Message("user", content)))

    def question_text(self, question: str) -> str:
        if self.task == "code":
            return self.texts.code_template.format(prompt=question.strip("\n") + "\n").lstrip()
        return question.strip()

    def identity(self) -> dict[str, str]:
        return {"prompt_version": self.version, "task": self.task}


def hint_prefix_length(rendered: str, insights: str, guide: str = _HINT_GUIDE) -> int:
    """Character index just after the insights in a rendered hint prompt (for shadow scoring)."""
    if not insights:
        idx = rendered.rfind(guide.rstrip("\n"))
        return idx + len(guide) if idx >= 0 else len(rendered)
    idx = rendered.rfind(insights)
    if idx < 0:
        raise ValueError("insights not found in the rendered prompt")
    return idx + len(insights)
