"""The method grammar, parsed in one place.

    slm | llm | tandem | tandem:EFFORT | fixed:N | afterthink | route | route:EFFORT | cascade | cascade:T
    | oracle (replay only)

`tandem:EFFORT` runs tandem at that effort; `fixed:N` hands over at the first checkpoint after N LLM
tokens (N >= 0; 0 is the SLM alone); `cascade:T` escalates when the SLM's mean token log-prob is
below T; `route:EFFORT` routes with that effort's checkpoint-0 threshold (replay).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

Kind = Literal["slm", "llm", "tandem", "fixed", "afterthink", "route", "cascade", "oracle"]
_PLAIN: tuple[Kind, ...] = ("slm", "llm", "tandem", "afterthink", "route", "cascade", "oracle")
GRAMMAR = "tandem, tandem:EFFORT, slm, llm, fixed:N, afterthink, route, cascade or cascade:T"


@dataclass(frozen=True)
class Method:
    kind: Kind
    effort: str | None = None  # tandem:EFFORT, route:EFFORT
    budget: int | None = None  # fixed:N
    threshold: float | None = None  # cascade:T

    @classmethod
    def parse(cls, name: str) -> Method:
        """The method `name` denotes; ConfigError (one line, naming the grammar) when it denotes none."""
        head, sep, arg = name.partition(":")
        if not sep:
            if head in _PLAIN:
                return cls(head)
            raise ConfigError(f"unknown method {name!r}: use {GRAMMAR}")
        if head == "fixed":
            try:
                n = int(arg)
            except ValueError:
                raise ConfigError(f"bad method {name!r}: use fixed:N with N an integer") from None
            if n < 0:
                raise ConfigError(f"bad method {name!r}: N is the LLM tokens before the hand-over, at least 0")
            return cls("fixed", budget=n)
        if head == "cascade":
            try:
                t = float(arg)
            except ValueError:
                raise ConfigError(f"bad method {name!r}: use cascade:T with T a mean log-prob") from None
            if not math.isfinite(t):
                raise ConfigError(f"bad method {name!r}: use cascade:T with T a finite mean log-prob")
            return cls("cascade", threshold=t)
        if head in ("tandem", "route"):
            # an effort of the stop rule: low, medium, high, or one a rule of one's own names
            if not re.fullmatch(r"[A-Za-z_][\w-]*", arg):
                raise ConfigError(f"bad method {name!r}: use {head}:EFFORT with EFFORT an effort's name "
                                  "(low, medium, high)")
            return cls(head, effort=arg)  # type: ignore[arg-type]
        raise ConfigError(f"unknown method {name!r}: use {GRAMMAR}")

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.budget}"
        if self.kind == "cascade" and self.threshold is not None:
            return f"cascade:{self.threshold:g}"
        if self.effort is not None:
            return f"{self.kind}:{self.effort}"
        return self.kind
