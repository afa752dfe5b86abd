"""What evaluation runs store: one `Outcome` per (problem, method), live or replayed.

An Outcome is flat and JSON-friendly so that reports can join runs by problem id and compare
methods priced the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Outcome:
    """One method on one problem: graded answer, cost, where it handed over, and any error."""

    problem_id: str
    method: str
    correct: bool = False
    error: str | None = None  # set when the sample failed to run: never graded, counted apart
    answer: str | None = None
    gold: str = ""
    extraction_rule: str = "none"
    grade_reason: str = ""
    truncated: bool = False
    stop_reason: str = ""
    handover_tokens: int | None = None
    llm_prompt_tokens: int = 0  # computed (each once) incl. nothing cached
    llm_generated_tokens: int = 0
    slm_prompt_tokens: int = 0  # computed prompt tokens incl. the shadow pass
    slm_generated_tokens: int = 0
    flops_total: float = 0.0
    flops_generated: float = 0.0
    wall_seconds: float = 0.0
    replayed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
