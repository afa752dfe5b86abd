"""Honest cost accounting: tokens each model really computed, FLOPs both ways, wall time, money.

FLOPs = 2 x parameters x tokens per model (BRIEF section 4). Two totals are reported side by side:
`flops_total` counts prompt tokens computed (each once: cache hits are free, the SLM's shadow
pass is counted where it is computed) plus generated tokens; `flops_generated` counts generated
tokens only, the paper's definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .types import Usage


@dataclass(frozen=True)
class Price:
    """Money per million tokens (any currency). Zero means not configured."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


@dataclass
class ModelCost:
    name: str
    n_params: int
    prompt_tokens_computed: int = 0
    prompt_tokens_cached: int = 0
    scored_tokens: int = 0  # shadow pass: prompt-like tokens appended to score insights
    generated_tokens: int = 0
    seconds: float = 0.0
    calls: int = 0
    price: Price = field(default_factory=Price)

    def add(self, usage: Usage, *, scoring: bool = False) -> None:
        if scoring:
            self.scored_tokens += usage.computed_prompt_tokens
        else:
            self.prompt_tokens_computed += usage.computed_prompt_tokens
        self.prompt_tokens_cached += usage.cached_prompt_tokens
        self.generated_tokens += usage.generated_tokens
        self.seconds += usage.seconds
        self.calls += 1

    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens_computed + self.scored_tokens

    @property
    def flops_total(self) -> float:
        return 2.0 * self.n_params * (self.input_tokens + self.generated_tokens)

    @property
    def flops_generated(self) -> float:
        return 2.0 * self.n_params * self.generated_tokens

    @property
    def money(self) -> float:
        return (
            self.input_tokens * self.price.input_per_mtok + self.generated_tokens * self.price.output_per_mtok
        ) / 1e6

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("price")
        d.update(flops_total=self.flops_total, flops_generated=self.flops_generated, money=self.money)
        return d


@dataclass
class CostReport:
    """Cost of one run, per model ("llm", "slm") and in total, plus wall time per phase."""

    models: dict[str, ModelCost] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def model(self, role: str, name: str, n_params: int, price: Price | None = None) -> ModelCost:
        if role not in self.models:
            self.models[role] = ModelCost(name=name, n_params=n_params, price=price or Price())
        return self.models[role]

    def add_phase(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @property
    def flops_total(self) -> float:
        return sum(m.flops_total for m in self.models.values())

    @property
    def flops_generated(self) -> float:
        return sum(m.flops_generated for m in self.models.values())

    @property
    def money(self) -> float:
        return sum(m.money for m in self.models.values())

    def tokens(self, role: str, kind: str = "generated_tokens") -> int:
        m = self.models.get(role)
        return int(getattr(m, kind)) if m else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "phases": dict(self.phases),
            "wall_seconds": self.wall_seconds,
            "flops_total": self.flops_total,
            "flops_generated": self.flops_generated,
            "money": self.money,
        }
