"""Choose operating points on a held-out probe table against an explicit accuracy-versus-cost objective.

Every candidate is scored by replaying the probe table exactly as a live run would go
(`tandem.bench.replay`), priced with total FLOPs (prompt + generated, shadow passes included).
Cost is relative: the candidate's mean total FLOPs over the LLM alone's on the same problems.

Objectives (one per effort; route and cascade use the medium effort's, or the one given):
- `lambda` L: maximise accuracy - L x relative cost;
- `target` A: the least relative cost at which accuracy >= A (if no candidate reaches A: the most
  accurate, marked unsatisfied);
- `budget` F: the best accuracy at relative cost <= F (if none fits: the cheapest, unsatisfied);
- `gap` G: the least relative cost at which accuracy >= the LLM alone's accuracy on the table - G
  (a `target` relative to the LLM: the reasoning regime's rule, 0.02 for medium, 0.05 for low).
  With a `confidence` C, a point must be shown within G, not merely look so: the points are tested
  as in Learn-then-Test (Angelopoulos et al. 2021; CALM, Schuster et al. 2022, for early exits) -
  per sequence of thresholds at one budget (and finish), from the most cautious threshold down, each
  point passes when the lower one-sided bound of its paired accuracy difference against the LLM alone
  (Newcombe's interval, as the reports use) is >= -G at level 1 - (1 - C) / (number of sequences);
  a sequence stops at its first failure. The cheapest point that passed is chosen; when none did,
  the most cautious point (the LLM alone, or the largest budget), marked unsatisfied. Choosing from
  many candidates by their point estimates picks the luckiest one on the table; the fixed sequences
  and the split level keep the chance that any chosen point misses G on the problems' population
  near 1 - C (the interval being approximate). The per-stage search is skipped. With the `cost`
  order instead, all tandem points form one sequence, from the dearest on the table down (a point's
  cost depends on where the classifier stops, not on whether the answers are right), tested at the
  level C itself: no split, so more power, at the price of an order read off the table's features.
Ties go to the cheaper candidate. By default the efforts are three points of the same curve:
lambda 0.5 (low), 0.2 (medium) and 0.05 (high) - accuracy points worth 2%, 5% and 20% of the LLM
alone's cost each.

Candidates: for `tandem:EFFORT`, every stage budget of the table (as the effort's largest budget)
times a grid of thresholds (quantiles of the classifier's probabilities on the table, plus 0: the
SLM alone, and 1.01: never early, i.e. the fixed budget - or, with `finish`, the LLM alone without
shadow passes), each with and without `finish` (at the budget the LLM finishes its own answer
instead of handing over; continue hand-over only); for `route`, quantiles of the checkpoint-0
probabilities plus 0 and 1.01 (always the SLM / the LLM, decided without a scoring pass); for `cascade`, quantiles of the SLM alone's mean token log-prob.
Per stage (on by default): from each effort's chosen point, a coordinate search over a coarser grid
of thresholds per checkpoint stage (quantiles of that stage's probabilities), keeping a stage's own
threshold only when it strictly improves the objective on the calibration table; the calibration
record keeps the point before the search, so the gain (and the risk of fitting noise) is visible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from ..bench.records import Outcome
from ..bench.replay import PairParams, ck_features, replay, replay_cascade, replay_policy, replay_route
from ..bench.report import paired_difference_interval
from ..classifier import SufficiencyClassifier
from ..errors import ConfigError
from ..policy import EFFORTS, EffortSetting, StopRule
from ..types import PolicyBase
from .data import ProbeTable

ObjectiveKind = Literal["lambda", "target", "budget", "gap"]
OBJECTIVES: tuple[ObjectiveKind, ...] = ("lambda", "target", "budget", "gap")
DEFAULT_LAMBDAS: dict[str, float] = {"low": 0.5, "medium": 0.2, "high": 0.05}
DEFAULT_GRID = 50
DEFAULT_STAGE_GRID = 12  # per-stage search: coarser, it has more knobs to overfit with
NEVER = 1.01  # a threshold no probability reaches: hand over at the budget only
_EPS = 1e-9


@dataclass(frozen=True)
class Point:
    """One candidate operating point and what it scores on the calibration table."""

    threshold: float
    budget: int | None
    accuracy: float
    relative_cost: float
    stage_thresholds: tuple[tuple[int, float], ...] = ()  # (stage, threshold) overriding `threshold`
    finish: bool = False  # at the budget the LLM finishes instead of handing over
    # paired with the LLM alone on the same problems: right / wrong on both, right only here, right only there
    both: int = 0
    wins: int = 0
    losses: int = 0
    neither: int = 0

    def difference_bound(self, confidence: float) -> float:
        """Lower one-sided `confidence` bound of (this point's accuracy - the LLM alone's)."""
        z = NormalDist().inv_cdf(confidence)
        return paired_difference_interval(self.both, self.wins, self.losses, self.neither, z)[0]


@dataclass(frozen=True)
class Objective:
    kind: ObjectiveKind
    value: float
    reference: float | None = None  # gap: the LLM alone's accuracy on the calibration table
    confidence: float | None = None  # gap: judged by this one-sided lower bound of the paired difference
    order: Literal["threshold", "cost"] = "threshold"  # with a confidence: the sequences tested

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.kind!r}; choose {', '.join(OBJECTIVES)}")
        if not math.isfinite(self.value):
            raise ConfigError(f"objective {self.kind}: the value must be finite")
        if self.kind == "lambda" and self.value < 0:
            raise ConfigError("objective lambda: lambda must be >= 0")
        if self.kind == "target" and not 0 < self.value <= 1:
            raise ConfigError("objective target: the target accuracy is a fraction in (0, 1]")
        if self.kind == "budget" and self.value <= 0:
            raise ConfigError("objective budget: the FLOPs budget is a fraction of the LLM alone's, > 0")
        if self.kind == "gap" and not 0 <= self.value < 1:
            raise ConfigError("objective gap: the accuracy gap to the LLM alone is a fraction in [0, 1)")
        if self.confidence is not None:
            if self.kind != "gap":
                raise ConfigError(f"a confidence applies to the gap objective only, not {self.kind}")
            if not 0.5 <= self.confidence < 1:
                raise ConfigError("objective gap: the confidence is a one-sided level in [0.5, 1), e.g. 0.9")
        if self.order not in ("threshold", "cost"):
            raise ConfigError(f"unknown certification order {self.order!r}; choose threshold or cost")
        if self.order != "threshold" and self.confidence is None:
            raise ConfigError("a certification order needs a confidence")

    def on(self, llm_accuracy: float) -> Objective:
        """This objective against a table whose LLM alone is right on `llm_accuracy` of the problems."""
        return replace(self, reference=llm_accuracy) if self.kind == "gap" else self

    @property
    def target(self) -> float:
        if self.kind == "gap":
            if self.reference is None:
                raise ConfigError("objective gap: no calibration table given its reference accuracy")
            return self.reference - self.value
        return self.value

    def value_of(self, p: Point) -> float | None:
        """The quantity maximised (lambda: accuracy - L x cost); None for constrained objectives."""
        return p.accuracy - self.value * p.relative_cost if self.kind == "lambda" else None

    def shown_within(self, p: Point, level: float) -> bool:
        """Gap objective: the lower one-sided `level` bound of `p`'s paired difference against the LLM
        alone is within the gap."""
        return p.difference_bound(level) >= -self.value - _EPS

    def feasible(self, p: Point) -> bool:
        if self.confidence is not None:
            return self.shown_within(p, self.confidence)
        if self.kind in ("target", "gap"):
            return p.accuracy >= self.target - _EPS
        if self.kind == "budget":
            return p.relative_cost <= self.value + _EPS
        return True

    def key(self, p: Point) -> tuple[float, ...]:
        """Sort key: the smaller, the better (feasible first; ties to the cheaper, then higher threshold)."""
        if self.kind == "lambda":
            return (-(p.accuracy - self.value * p.relative_cost), p.relative_cost, -p.threshold)
        ok = self.feasible(p)
        if self.kind in ("target", "gap"):
            return (0.0, p.relative_cost, -p.accuracy, -p.threshold) if ok else \
                (1.0, -p.accuracy, p.relative_cost, -p.threshold)
        return (0.0, -p.accuracy, p.relative_cost, -p.threshold) if ok else \
            (1.0, p.relative_cost, -p.accuracy, -p.threshold)

    def choose(self, points: Sequence[Point]) -> tuple[Point, bool]:
        """The best point and whether it satisfies the objective's constraint."""
        if not points:
            raise ConfigError("no candidate operating points")
        best = min(points, key=self.key)
        return best, self.feasible(best)

    def improves(self, new: Point, old: Point) -> bool:
        """Strictly better on the objective (the threshold tie-break aside)."""
        return self.key(new)[:-1] < self.key(old)[:-1]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "value": self.value, "cost": "flops_total"}
        if self.kind == "gap" and self.reference is not None:
            d["llm_accuracy"] = self.reference
        if self.confidence is not None:
            d["confidence"] = self.confidence
            d["order"] = self.order
        return d

    def describe(self) -> str:
        return {"lambda": f"max accuracy - {self.value:g} x relative cost",
                "target": f"accuracy >= {self.value:g} at least cost",
                "budget": f"best accuracy at relative cost <= {self.value:g}",
                "gap": (f"the {self.confidence:g} lower bound of accuracy - the LLM alone's >= -{self.value:g} "
                        "at least cost" if self.confidence is not None else
                        f"accuracy >= the LLM alone's - {self.value:g} at least cost"
                        + (f" (>= {self.target:.3f})" if self.reference is not None else ""))}[self.kind]


class _Cached(PolicyBase):
    """The classifier's probabilities, computed once per checkpoint of the table."""

    def __init__(self, clf: SufficiencyClassifier) -> None:
        self.name = clf.name
        self.uses_shadow = clf.uses_shadow
        self._clf = clf
        self._memo: dict[int, tuple[dict[str, float], float]] = {}

    def sufficiency(self, features: dict[str, float]) -> float:
        hit = self._memo.get(id(features))
        if hit is not None and hit[0] is features:
            return hit[1]
        p = self._clf.sufficiency(features)
        self._memo[id(features)] = (features, p)
        return p


class CalibrationTable:
    """Pooled probe records with their pricing, able to score any operating point by replay."""

    def __init__(self, tables: Sequence[ProbeTable], clf: SufficiencyClassifier) -> None:
        if not tables:
            raise ConfigError("no calibration tables given")
        self.tables = list(tables)
        self.items = [(t, rec, PairParams(int(t.manifest["llm"]["n_params"]), int(t.manifest["slm"]["n_params"])))
                      for t in tables for rec in t.records]
        if not self.items:
            raise ConfigError("the calibration tables hold no usable records")
        self.budgets = sorted(set.intersection(*(set(t.budgets) for t in tables)))
        if not self.budgets:
            raise ConfigError("the calibration tables share no stage budget")
        self.policy = _Cached(clf)
        llm = [replay(rec, "llm", p) for _, rec, p in self.items]
        slm = [replay(rec, "slm", p) for _, rec, p in self.items]
        self.llm_correct = [o.correct for o in llm]
        self.llm_cost = float(np.mean([o.flops_total for o in llm]))
        if self.llm_cost <= 0:
            raise ConfigError("the LLM alone costs nothing on these tables: cannot price relative cost")
        self.llm_accuracy = float(np.mean(self.llm_correct))
        self.slm_accuracy = float(np.mean([o.correct for o in slm]))

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def problem_ids(self) -> list[str]:
        return [rec["problem_id"] for _, rec, _ in self.items]

    def _point(self, outs: Sequence[Outcome], threshold: float, budget: int | None) -> Point:
        acc = sum(o.correct for o in outs) / len(outs)
        rel = float(np.mean([o.flops_total for o in outs])) / self.llm_cost
        pairs = list(zip((o.correct for o in outs), self.llm_correct, strict=True))
        return Point(threshold, budget, acc, rel, both=sum(a and b for a, b in pairs),
                     wins=sum(a and not b for a, b in pairs), losses=sum(b and not a for a, b in pairs),
                     neither=sum(not a and not b for a, b in pairs))

    @property
    def can_finish(self) -> bool:
        """Whether every table can price the LLM finishing its own answer: continue hand-over, or a
        reasoning LLM (its own answer exists in every mode)."""
        return all(t.handover == "continue" or str(t.manifest.get("probe_version", "")) >= "probe-v2"
                   for t in self.tables)

    def tandem(self, budget: int, threshold: float, stage_thresholds: Mapping[int, float] | None = None,
               finish: bool = False) -> Point:
        stages = dict(stage_thresholds or {})
        rule = StopRule({"calibrate": EffortSetting(budget, threshold, stages, finish)})
        outs = [replay_policy(rec, p, self.policy, rule, effort="calibrate", handover=t.handover,
                              budgets=t.budgets) for t, rec, p in self.items]
        return replace(self._point(outs, threshold, budget), stage_thresholds=tuple(sorted(stages.items())),
                       finish=finish)

    def n_stages(self, budget: int) -> int:
        """Checkpoint stages an effort with this largest budget visits (stage 0 not counted)."""
        return sum(1 for b in self.budgets if b <= budget)

    def stage_probabilities(self, stage: int) -> np.ndarray:
        if stage == 0:
            return self.probabilities(stage0_only=True)
        return np.asarray([self.policy.sufficiency(ck_features(rec, ck)) for _, rec, _ in self.items
                           for ck in rec["checkpoints"] if ck["stage"] == stage], dtype=np.float64)

    def route(self, threshold: float) -> Point:
        return self._point([replay_route(rec, p, self.policy, threshold) for _, rec, p in self.items],
                           threshold, None)

    def cascade(self, threshold: float) -> Point:
        return self._point([replay_cascade(rec, p, threshold) for _, rec, p in self.items], threshold, None)

    def probabilities(self, *, stage0_only: bool = False) -> np.ndarray:
        feats = [ck_features(rec, None) for _, rec, _ in self.items]
        if not stage0_only:
            feats += [ck_features(rec, ck) for _, rec, _ in self.items for ck in rec["checkpoints"]]
        return np.asarray([self.policy.sufficiency(f) for f in feats], dtype=np.float64)

    def slm_logprobs(self) -> np.ndarray:
        return np.asarray([float(rec["slm_alone"]["lp_mean"]) for _, rec, _ in self.items], dtype=np.float64)


def threshold_grid(values: np.ndarray, n: int, *, low: float, high: float, digits: int = 4) -> list[float]:
    """Rounded quantiles of `values` plus the two ends (evaluated as stored, so rounding is harmless)."""
    if n < 2:
        raise ConfigError("the threshold grid needs at least 2 points")
    qs = np.quantile(values, np.linspace(0.0, 1.0, n)) if len(values) else np.asarray([])
    return sorted({round(float(q), digits) for q in qs} | {low, high})


@dataclass
class Chosen:
    objective: Objective
    point: Point
    satisfied: bool


@dataclass
class CalibrationResult:
    table: CalibrationTable
    tandem_points: list[Point] = field(default_factory=list)
    route_points: list[Point] = field(default_factory=list)
    cascade_points: list[Point] = field(default_factory=list)
    chosen: dict[str, Chosen] = field(default_factory=dict)
    global_points: dict[str, Point] = field(default_factory=dict)  # each effort's point before per-stage search

    def curves(self) -> dict[str, list[tuple[float, float, float]]]:
        """(threshold, accuracy, relative cost) per chosen effort budget, and the route's."""
        out: dict[str, list[tuple[float, float, float]]] = {}
        chosen = {(c.point.budget, c.point.finish) for e, c in self.chosen.items() if e in EFFORTS and c.point.budget}
        for b, fin in sorted(chosen):
            out[f"tandem, budget {b}{', LLM finishes' if fin else ''}"] = [
                (p.threshold, p.accuracy, p.relative_cost) for p in self.tandem_points
                if p.budget == b and p.finish == fin and p.threshold <= 1.0]
        if self.route_points:
            out["route"] = [(p.threshold, p.accuracy, p.relative_cost) for p in self.route_points
                            if p.threshold <= 1.0]
        return out


def refine_per_stage(table: CalibrationTable, start: Point, obj: Objective, *, grid: int = DEFAULT_STAGE_GRID,
                     passes: int = 2) -> Point:
    """Coordinate search from `start`: try other thresholds at one stage at a time (the others held)
    and keep a change only when it strictly improves the objective. Returns `start` when nothing does."""
    if start.budget is None:
        return start
    best = start
    stages = dict(start.stage_thresholds)
    grids = {stage: threshold_grid(table.stage_probabilities(stage), grid, low=0.0, high=NEVER)
             for stage in range(table.n_stages(start.budget) + 1)}
    for _ in range(passes):
        changed = False
        for stage, thresholds in grids.items():
            for thr in thresholds:
                if thr == stages.get(stage, start.threshold):
                    continue
                cand = table.tandem(start.budget, start.threshold, {**stages, stage: thr}, start.finish)
                if obj.improves(cand, best):
                    best, stages, changed = cand, {**stages, stage: thr}, True
        if not changed:
            break
    return best


def choose_certified(points: Sequence[Point], obj: Objective, *, sequence: Callable[[Point], Hashable],
                     cautious: Point) -> tuple[Point, bool]:
    """The cheapest point that passes the fixed-sequence test of the module docstring (`obj` a gap
    objective with a confidence); `sequence(point)` names the sequence a point belongs to (the
    `threshold` order); `cautious` when none passes (unsatisfied)."""
    if obj.confidence is None:
        raise ConfigError("a certified choice needs an objective with a confidence")
    groups: dict[Hashable, list[Point]] = {}
    if obj.order == "cost":  # one sequence, the dearest point first
        groups[None] = sorted(points, key=lambda q: (-q.relative_cost, -q.threshold))
    else:  # per sequence, the most cautious threshold first
        for p in points:
            groups.setdefault(sequence(p), []).append(p)
        groups = {k: sorted(g, key=lambda q: -q.threshold) for k, g in groups.items()}
    level = 1.0 - (1.0 - obj.confidence) / max(len(groups), 1)
    passed: list[Point] = []
    for group in groups.values():
        for p in group:
            if not obj.shown_within(p, level):
                break
            passed.append(p)
    if not passed:
        return cautious, False
    return min(passed, key=lambda q: (q.relative_cost, -q.accuracy, -q.threshold)), True


def calibrate(clf: SufficiencyClassifier, tables: Sequence[ProbeTable], objectives: Mapping[str, Objective], *,
              route: Objective | None = None, cascade: Objective | None = None, grid: int = DEFAULT_GRID,
              split: str | None = None, per_stage: bool = True, finish: bool = True,
              ) -> tuple[SufficiencyClassifier, CalibrationResult]:
    """Choose each effort's (budget, threshold) - then, with `per_stage`, thresholds per checkpoint
    stage where they improve the objective - and the route / cascade thresholds, on `tables`; return
    the classifier with those operating points and the calibration recorded. `finish`: also try
    letting the LLM finish at the budget (where the tables can price it)."""
    unknown = set(objectives) - set(EFFORTS)
    if unknown:
        raise ConfigError(f"unknown effort(s) {', '.join(sorted(unknown))}; choose from {', '.join(EFFORTS)}")
    table = CalibrationTable(tables, clf)
    objectives = {e: o.on(table.llm_accuracy) for e, o in objectives.items()}
    route = route.on(table.llm_accuracy) if route is not None else None
    cascade = cascade.on(table.llm_accuracy) if cascade is not None else None
    res = CalibrationResult(table)
    if objectives:
        thresholds = threshold_grid(table.probabilities(), grid, low=0.0, high=NEVER)
        finishes = (False, True) if finish and table.can_finish else (False,)
        res.tandem_points = [table.tandem(b, t, finish=f) for f in finishes for b in table.budgets
                             for t in thresholds]
        for effort, obj in objectives.items():
            if obj.confidence is not None:
                cautious = table.tandem(table.budgets[-1], NEVER, finish=finishes[-1])
                res.chosen[effort] = Chosen(obj, *choose_certified(
                    res.tandem_points, obj, sequence=lambda p: (p.budget, p.finish), cautious=cautious))
                continue
            point, _ = obj.choose(res.tandem_points)
            res.global_points[effort] = point
            if per_stage:
                point = refine_per_stage(table, point, obj)
            res.chosen[effort] = Chosen(obj, point, obj.feasible(point))
    if route is not None:
        thresholds = threshold_grid(table.probabilities(stage0_only=True), grid, low=0.0, high=NEVER)
        res.route_points = [table.route(t) for t in thresholds]
        res.chosen["route"] = Chosen(route, *(
            route.choose(res.route_points) if route.confidence is None else
            choose_certified(res.route_points, route, sequence=lambda p: None, cautious=table.route(NEVER))))
    if cascade is not None:
        lps = table.slm_logprobs()
        lo = math.floor(float(lps.min())) - 1.0 if len(lps) else -1.0
        thresholds = threshold_grid(lps, grid, low=lo, high=0.01)  # lo: never escalate; 0.01: always
        res.cascade_points = [table.cascade(t) for t in thresholds]
        res.chosen["cascade"] = Chosen(cascade, *(
            cascade.choose(res.cascade_points) if cascade.confidence is None else
            choose_certified(res.cascade_points, cascade, sequence=lambda p: None, cautious=table.cascade(0.01))))
    return _apply(clf, res, split, grid), res


def _apply(clf: SufficiencyClassifier, res: CalibrationResult, split: str | None, grid: int) -> SufficiencyClassifier:
    spec = clf.spec
    t = res.table
    runs = [x.describe() for x in t.tables]
    split_label = split or "; ".join(dict.fromkeys(x.split for x in t.tables))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    efforts = {e: p.model_dump() for e, p in spec.efforts.items()}
    calibration = spec.calibration.model_dump() if spec.calibration else {}
    changes: dict[str, Any] = {}
    n_points = {"route": len(res.route_points), "cascade": len(res.cascade_points)}
    for key, c in res.chosen.items():
        p = c.point
        stage_thresholds = {str(k): v for k, v in p.stage_thresholds}
        if key in EFFORTS:
            efforts[key] = {"max_budget": p.budget, "threshold": p.threshold, "stage_thresholds": stage_thresholds,
                            "finish": p.finish}
        else:
            changes[key] = {"threshold": p.threshold}
        calibration[key] = {
            "objective": c.objective.as_dict(), "probe_runs": runs, "split": split_label, "problems": t.n,
            "threshold": p.threshold, "max_budget": p.budget, "accuracy": p.accuracy,
            "relative_cost": p.relative_cost, "objective_value": c.objective.value_of(p),
            "satisfied": c.satisfied, "grid_points": n_points.get(key, len(res.tandem_points)),
            "paired": {"wins": p.wins, "losses": p.losses, "both": p.both, "neither": p.neither},
            "llm_accuracy": t.llm_accuracy, "slm_accuracy": t.slm_accuracy, "created": created,
        }
        if key in EFFORTS:
            calibration[key]["stage_thresholds"] = stage_thresholds
            calibration[key]["finish"] = p.finish
        g = res.global_points.get(key)
        if g is not None:
            calibration[key]["before_per_stage"] = {"accuracy": g.accuracy, "relative_cost": g.relative_cost,
                                                    "objective_value": c.objective.value_of(g)}
    return clf.replace(efforts=efforts, calibration=calibration, **changes)


def check_held_out(clf: SufficiencyClassifier, tables: Sequence[ProbeTable]) -> list[str]:
    """Problems of the calibration tables the classifier was trained on."""
    trained = set(clf.spec.training.problem_ids)
    return sorted({rec["problem_id"] for t in tables for rec in t.records} & trained)


def parse_values(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} takes numbers (comma-separated for low,medium,high), got {text!r}") from None
    if not vals:
        raise ConfigError(f"{option}: no value given")
    return vals


def objectives_from_options(effort: str, objective: str, *, lam: str | None = None, target: str | None = None,
                            budget: str | None = None, gap: str | None = None, confidence: float | None = None,
                            order: str = "threshold") -> tuple[dict[str, Objective], Objective]:
    """Per-effort objectives from command-line options, and the one route and cascade use.

    `effort` 'all' calibrates low, medium and high (three values, or the default lambdas);
    a single effort takes one value. Options for another objective than the chosen one are refused;
    `confidence` applies to the gap objective.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose {', '.join(OBJECTIVES)}")
    if effort != "all" and effort not in EFFORTS:
        raise ConfigError(f"unknown effort {effort!r}; choose all or one of {', '.join(EFFORTS)}")
    given = {"lambda": ("--lambda", lam), "target": ("--target-accuracy", target),
             "budget": ("--flops-budget", budget), "gap": ("--accuracy-gap", gap)}
    stray = [opt for kind, (opt, v) in given.items() if v is not None and kind != objective]
    if stray:
        raise ConfigError(f"{', '.join(stray)} does not apply to --objective {objective}")
    if confidence is not None and objective != "gap":
        raise ConfigError(f"--confidence does not apply to --objective {objective} (gap only)")
    if order != "threshold" and confidence is None:
        raise ConfigError("--certify-order needs --confidence")
    efforts: tuple[str, ...] = tuple(EFFORTS) if effort == "all" else (effort,)
    opt, raw = given[objective]
    vals = parse_values(raw, opt)
    if vals is None:
        if objective != "lambda":
            raise ConfigError(f"--objective {objective} needs {opt}")
        vals = [DEFAULT_LAMBDAS[e] for e in efforts]
    if len(vals) != len(efforts):
        raise ConfigError(f"{opt}: give {len(efforts)} value(s) for {', '.join(efforts)}, got {len(vals)}")
    objs = {e: Objective(objective, v, confidence=confidence, order=order)  # type: ignore[arg-type]
            for e, v in zip(efforts, vals, strict=True)}
    shared = objs.get("medium") or next(iter(objs.values()))
    return objs, shared


def plot_calibration(res: CalibrationResult, path: str | Path, *, title: str = "") -> list[Path]:
    """The trade-off curves (tandem per chosen budget, route) and, beside them, the cascade's."""
    from ..bench.report import plot_tradeoff

    out = Path(path)
    label = "mean FLOPs total / LLM alone"
    made = [plot_tradeoff(res.curves(), out, cost_label=label,
                          title=title or "Calibration: accuracy and relative cost against the threshold")]
    if res.cascade_points:
        pts = [(p.threshold, p.accuracy, p.relative_cost) for p in res.cascade_points]
        made.append(plot_tradeoff({"cascade": pts}, out.with_name(out.stem + ".cascade.png"), cost_label=label,
                                  title="Cascade: threshold on the SLM alone's mean token log-prob"))
    return made
