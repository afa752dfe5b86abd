"""Checkpoint features: domain-free statistics of token log-probs and entropies.

The same function computes features at training time (from probe tables) and at inference time
(in the pipeline), so the two can never drift apart. Nothing here looks at the words: only at how
surprised the models are, how much they have written, and which GPRA kinds have appeared.

Feature groups (see docs/classifier.md for the full table):
- `slm_q_*`: the SLM's log-probs / entropies over the question tokens (shadow pass);
- `slm_i_*`: the same over the insight tokens seen so far (shadow pass);
- `llm_*`: the LLM's own stream (log-probs / entropies of the tokens it generated);
- progress: `stage`, `llm_tokens`, `n_insights`, `has_insights`, GPRA flags;
- `trial_*`: the SLM's trial answer at the checkpoint (asked on its warm cache: does it give one,
  how sure it is, does it agree with the previous checkpoint's) - the stop signals of DEER and Dynasor;
- `thought_*`: a reasoning LLM's thought ended at this checkpoint (closed, or cut by its limit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .segment import GPRA_KINDS, InsightUnit
from .types import TokenStep

_STAT_NAMES = ("mean", "std", "min", "q10", "q25", "q50", "last16", "trend")
LAST_WINDOW = 16


def _stats(values: Sequence[float]) -> dict[str, float]:
    if len(values) == 0:
        return dict.fromkeys(_STAT_NAMES, 0.0)
    a = np.asarray(values, dtype=np.float64)
    q10, q25, q50 = np.quantile(a, [0.1, 0.25, 0.5])
    if len(a) > 1:
        x = np.arange(len(a), dtype=np.float64)
        trend = float(np.polyfit(x / max(len(a) - 1, 1), a, 1)[0])
    else:
        trend = 0.0
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "q10": float(q10),
        "q25": float(q25),
        "q50": float(q50),
        "last16": float(a[-LAST_WINDOW:].mean()),
        "trend": trend,
    }


def _group(prefix: str, steps: Sequence[TokenStep]) -> dict[str, float]:
    lps = [s.logprob for s in steps if s.logprob is not None]
    ents = [s.entropy for s in steps if s.entropy is not None]
    out = {f"{prefix}_lp_{k}": v for k, v in _stats(lps).items()}
    out.update({f"{prefix}_ent_{k}": v for k, v in _stats(ents).items()})
    out[f"{prefix}_n"] = float(len(steps))
    return out


def _names(prefix: str) -> list[str]:
    return [f"{prefix}_{q}_{k}" for q in ("lp", "ent") for k in _STAT_NAMES] + [f"{prefix}_n"]


FEATURE_GROUPS: dict[str, list[str]] = {
    "slm_question": _names("slm_q"),
    "slm_insights": _names("slm_i"),
    "llm_stream": _names("llm"),
    "progress": ["stage", "llm_tokens", "n_insights", "has_insights"] + [f"gpra_{k}" for k in GPRA_KINDS],
    "trial": ["trial_has_answer", "trial_lp_mean", "trial_lp_min", "trial_lp_sum", "trial_tokens",
              "trial_agree_prev"],
    "thought": ["thought_end", "thought_cut"],
}
TRIAL_GROUPS = ("trial",)
FEATURE_NAMES: list[str] = [n for names in FEATURE_GROUPS.values() for n in names]
SHADOW_GROUPS = ("slm_question", "slm_insights")


@dataclass
class CheckpointInputs:
    """Everything the features of one checkpoint are computed from."""

    stage: int
    llm_tokens: int
    units: Sequence[InsightUnit]
    llm_steps: Sequence[TokenStep] | None  # None: the LLM's stream has no log-probs (a recording)
    slm_question_steps: Sequence[TokenStep] | None  # None: no shadow pass available
    slm_insight_steps: Sequence[TokenStep] | None
    trial: dict[str, Any] | None = None  # the SLM's trial answer here (None: not asked)
    thought: str | None = None  # a reasoning LLM's thought here: "open", "closed" or "cut" (None: no thought)


def compute_features(inp: CheckpointInputs) -> dict[str, float]:
    """Feature vector (name -> value). Groups the backend cannot provide are left out."""
    feats: dict[str, float] = {}
    if inp.slm_question_steps is not None:
        feats.update(_group("slm_q", inp.slm_question_steps))
    if inp.slm_insight_steps is not None:
        feats.update(_group("slm_i", inp.slm_insight_steps))
    if inp.llm_steps is not None:
        feats.update(_group("llm", inp.llm_steps))
    kinds = {u.kind for u in inp.units}
    if inp.trial is not None:
        feats.update(trial_features(inp.trial))
    if inp.thought is not None:
        feats.update(thought_end=float(inp.thought != "open"), thought_cut=float(inp.thought == "cut"))
    feats.update(
        stage=float(inp.stage),
        llm_tokens=float(inp.llm_tokens),
        n_insights=float(len(inp.units)),
        has_insights=float(inp.llm_tokens > 0),
        **{f"gpra_{k}": float(k in kinds) for k in GPRA_KINDS},
    )
    return feats


def trial_features(trial: dict[str, Any]) -> dict[str, float]:
    """The `trial` group from a trial answer as probes record it (answer, lp_mean, lp_min, lp_sum, tokens,
    agree_prev); a trial that gave no answer has zero log-probs."""
    has = trial.get("answer") is not None
    return {
        "trial_has_answer": float(has),
        "trial_lp_mean": float(trial.get("lp_mean") or 0.0) if has else 0.0,
        "trial_lp_min": float(trial.get("lp_min") or 0.0) if has else 0.0,
        "trial_lp_sum": float(trial.get("lp_sum") or 0.0) if has else 0.0,
        "trial_tokens": float(trial.get("tokens") or 0),
        "trial_agree_prev": float(bool(trial.get("agree_prev"))),
    }


def available_groups(features: dict[str, float]) -> list[str]:
    return [g for g, names in FEATURE_GROUPS.items() if all(n in features for n in names)]
