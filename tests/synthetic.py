"""Synthetic probe tables from scripted backends, with real signal for the classifier.

Problem i carries `i % 6` difficulty marks in its question; the SLM is right once it has 40 words
of the LLM's prefix per mark (so alone only on unmarked problems), and never on every seventh
problem ("Tricky"). The LLM is always right. Longer questions (more marks) need longer prefixes:
the features see both the prefix length and the question length.
"""

from __future__ import annotations

from pathlib import Path

from tandem.backends.scripted import ScriptedBackend
from tandem.bench.graders import get_grader
from tandem.bench.probe import ProbeConfig
from tandem.bench.runner import run_probe
from tandem.bench.store import RunStore
from tandem.types import Problem

LLM_REPLY = " ".join(f"Step {i} adds one thing." for i in range(60)) + " The answer is \\boxed{7}."
MARK = " Think carefully."
LLM_PARAMS, SLM_PARAMS = 1_500_000_000, 500_000_000


def slm_reply(prompt, text):
    q = prompt.messages[-1].content
    need = 10_000 if "Tricky" in q else 40 * q.count(MARK.strip())
    return " So the answer is \\boxed{7}." if len(prompt.assistant_prefix.split()) >= need else " I think \\boxed{5}."


def problems(lo: int, hi: int) -> list[Problem]:
    return [Problem(id=f"syn-{i:04d}", question=f"Question {i}: what is 3 + 4?" + MARK * (i % 6)
                    + (" Tricky." if i % 7 == 3 else ""), answer="7") for i in range(lo, hi)]


def pair(llm_fail_after: int | None = None) -> tuple[ScriptedBackend, ScriptedBackend]:
    return (ScriptedBackend(LLM_REPLY, name="big", n_params=LLM_PARAMS, fail_after=llm_fail_after),
            ScriptedBackend(slm_reply, name="small", n_params=SLM_PARAMS))


def make_table(out: Path, lo: int, hi: int, *, split: str = "train", llm_fail_after: int | None = None) -> Path:
    llm, slm = pair(llm_fail_after)
    run_probe(problems(lo, hi), llm, slm, get_grader("gsm8k"), RunStore(out), ProbeConfig(),
              dataset=f"synthetic/{split}[{lo}:{hi}]", grader_name="gsm8k")
    return out
