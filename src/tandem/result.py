"""The structured record of one solve: what was decided, why, and what it cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .cost import CostReport
from .segment import InsightUnit
from .types import Extraction


@dataclass
class CheckpointRecord:
    stage: int  # 0 = before the LLM writes anything
    llm_tokens: int
    n_insights: int
    features: dict[str, float]
    probability: float
    threshold: float
    handover: bool
    reason: str  # "sufficient" | "budget" | "finish" (the LLM goes on to finish) | "continue"
    score_seconds: float = 0.0  # shadow pass
    decide_seconds: float = 0.0  # features + policy

    def summary(self) -> dict[str, Any]:
        """The record without its feature vector, as API responses carry it (shallow: no deep copy)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "features"}


@dataclass
class TandemResult:
    method: str  # "tandem" | "slm" | "llm" | "fixed:N"
    question: str
    text: str  # the full final text (in continue mode: LLM prefix + SLM continuation)
    answer: Extraction
    stop_reason: str  # "slm_alone" | "sufficient" | "budget" | "llm_finished" | "llm_alone"
    llm_text: str = ""
    slm_text: str = ""
    handover_mode: str = "continue"
    handover_tokens: int | None = None  # LLM tokens written before the hand-over (None: no hand-over)
    insights: list[InsightUnit] = field(default_factory=list)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    cost: CostReport = field(default_factory=CostReport)
    settings: dict[str, Any] = field(default_factory=dict)
    features_used: list[str] = field(default_factory=list)
    finish_reason: str | None = None  # of the model that wrote the last part ("stop", "length", …)
    cancel_latency_s: float | None = None  # stop decision -> LLM stream closed

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost"] = self.cost.to_dict()
        d["truncated"] = self.truncated
        return d
