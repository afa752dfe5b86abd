"""The sufficiency classifier: a `StopPolicy` read from a versioned, human-readable JSON file.

Two kinds, both evaluated with numpy alone (scikit-learn is needed to train, never to run):

- `logistic`: standardisation (mean, scale) then a logistic regression (weights, intercept);
- `gbdt`: gradient-boosted regression trees on the log-odds (an initial log-odds, a learning
  rate and trees as plain arrays: feature, threshold, left, right, value).

The file also carries the model pair it was trained for, where its training data came from, its
cross-validated metrics and the operating points: per effort a largest budget and thresholds
(which `stop_rule()` turns into the `StopRule`), plus the calibrated `route` and `cascade`
thresholds. Files are validated strictly and never unpickled. See docs/classifier.md.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .config import StrictModel as _Strict
from .config import format_validation_error
from .errors import ConfigError, InputError
from .features import FEATURE_GROUPS, SHADOW_GROUPS
from .policy import EFFORTS, EffortSetting, StopRule
from .types import ModelInfo, PolicyBase

__all__ = [
    "FORMAT",
    "VERSION",
    "ClassifierFile",
    "ModelPairWarning",
    "SufficiencyClassifier",
    "classifier_from_dict",
    "load_classifier",
    "shipped_classifier_for",
]

FORMAT = "tandem-sufficiency-classifier"
VERSION = 1
Kind = Literal["logistic", "gbdt"]

_FEATURE_GROUP = {n: g for g, names in FEATURE_GROUPS.items() for n in names}
_SHADOW_FEATURES = frozenset(n for g in SHADOW_GROUPS for n in FEATURE_GROUPS[g])


class ModelPairWarning(UserWarning):
    """The classifier was trained for another model pair than the one it is used with."""


# --- the file format -----------------------------------------------------------------------------


class ModelRef(_Strict):
    """One model of the pair, as probe manifests record it."""

    name: str
    checksum: str = ""
    n_params: int = Field(ge=0)
    tokenizer_id: str = ""
    chat_template_id: str = ""
    entropy: Literal["exact", "topk", "none"] = "exact"  # how the training backend measured entropies


class ModelPair(_Strict):
    llm: ModelRef
    slm: ModelRef


class Normalization(_Strict):
    """x -> (x - mean) / scale, per feature."""

    mean: list[float]
    scale: list[float]

    @field_validator("scale")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(not s > 0 for s in v):
            raise ValueError("every scale must be > 0")
        return v


class LogisticParams(_Strict):
    coef: list[float]
    intercept: float


class Tree(_Strict):
    """Node arrays; node 0 is the root. A leaf has left == right == -1. Go left when
    x[feature] <= threshold, with x rounded to float32 first (as scikit-learn's trees do)."""

    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    value: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> Tree:
        n = len(self.feature)
        if n == 0 or any(len(a) != n for a in (self.threshold, self.left, self.right, self.value)):
            raise ValueError("feature, threshold, left, right and value must be non-empty and of one length")
        for i in range(n):
            lo, hi = self.left[i], self.right[i]
            if (lo == -1) != (hi == -1):
                raise ValueError(f"node {i}: left and right must both be -1 (a leaf) or both children")
            if lo != -1 and not (i < lo < n and i < hi < n):
                raise ValueError(f"node {i}: children must point forward inside the tree")
        return self


class GbdtParams(_Strict):
    init: float
    learning_rate: float = Field(gt=0)
    trees: list[Tree] = Field(min_length=1)


def _params_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "gbdt" if "trees" in v else "logistic"
    return "gbdt" if isinstance(v, GbdtParams) else "logistic"


Params = Annotated[
    Annotated[LogisticParams, Tag("logistic")] | Annotated[GbdtParams, Tag("gbdt")],
    Discriminator(_params_kind),
]


class EffortPoint(_Strict):
    max_budget: int = Field(gt=0)
    threshold: float
    stage_thresholds: dict[int, float] = Field(default_factory=dict)
    finish: bool = False  # at the budget, the LLM finishes unless the insights were judged sufficient


class Threshold(_Strict):
    threshold: float


class ProbeRun(_Strict):
    """A probe table a model was fitted or calibrated on."""

    path: str
    dataset: str
    handover: str
    stage_budgets: list[int]
    records: int
    errors: int = 0


class Training(_Strict):
    probe_runs: list[ProbeRun]
    split: str
    rows: int
    positives: int
    problems: int
    problem_ids: list[str] = Field(default_factory=list)
    label: str
    feature_groups: list[str]
    hyperparameters: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    created: str = ""
    git_revision: str = ""
    tandem_version: str = ""


class FoldMetrics(_Strict):
    rows: int
    problems: int
    roc_auc: float | None
    log_loss: float
    brier: float
    hyperparameters: dict[str, float | int | str | bool | None] = Field(default_factory=dict)  # chosen inside the fold


class StageMetrics(_Strict):
    stage: int
    rows: int
    positive_rate: float
    roc_auc: float | None


class Tuning(_Strict):
    """How the hyperparameters were chosen: by grouped CV log-loss over a grid, nested inside every
    outer fold (so the CV figures above are of the whole procedure), then once on all rows."""

    metric: Literal["log_loss"] = "log_loss"
    inner_folds: int
    grid: list[dict[str, float | int | str | bool | None]]
    scores: list[float]  # mean inner log-loss per grid point, on all rows


class CrossValidation(_Strict):
    folds: int
    grouping: str
    roc_auc: float | None
    log_loss: float
    brier: float
    per_fold: list[FoldMetrics] = Field(default_factory=list)
    by_stage: list[StageMetrics] = Field(default_factory=list)
    baseline_roc_auc_llm_tokens: float | None = None
    tuning: Tuning | None = None


class Objective(_Strict):
    kind: Literal["lambda", "target", "budget", "gap"]
    value: float
    cost: Literal["flops_total"] = "flops_total"
    llm_accuracy: float | None = None  # gap: the LLM alone's accuracy on the calibration table
    confidence: float | None = None  # gap: judged by this one-sided lower bound of the paired difference
    order: Literal["threshold", "cost"] | None = None  # with a confidence: the sequences tested

    @model_serializer(mode="wrap")
    def _without_unset_reference(self, handler: Any) -> dict[str, Any]:
        """Files of the other objectives read as they did before `gap` (and its confidence) existed."""
        data: dict[str, Any] = handler(self)
        for key in ("llm_accuracy", "confidence", "order"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class PairedCounts(_Strict):
    """A point's problems against the LLM alone's: right on both, only here, only there, on neither."""

    both: int
    wins: int
    losses: int
    neither: int


class PointSummary(_Strict):
    accuracy: float
    relative_cost: float
    objective_value: float | None = None


class CalibrationEntry(_Strict):
    """How one operating point was chosen, and what it achieved on the calibration table."""

    objective: Objective
    probe_runs: list[ProbeRun]
    split: str
    problems: int
    threshold: float
    max_budget: int | None = None
    accuracy: float
    relative_cost: float
    objective_value: float | None = None
    satisfied: bool = True
    grid_points: int
    llm_accuracy: float
    slm_accuracy: float
    created: str = ""
    stage_thresholds: dict[int, float] = Field(default_factory=dict)  # chosen by the per-stage search
    finish: bool = False  # the LLM finishes where no checkpoint was judged sufficient
    before_per_stage: PointSummary | None = None  # the single-threshold point the search started from
    paired: PairedCounts | None = None  # against the LLM alone on the calibration table

    @model_serializer(mode="wrap")
    def _without_unset_pairs(self, handler: Any) -> dict[str, Any]:
        """Files calibrated before the paired counts were kept read as they did."""
        data: dict[str, Any] = handler(self)
        if data.get("paired") is None:
            data.pop("paired", None)
        return data


class Calibration(_Strict):
    low: CalibrationEntry | None = None
    medium: CalibrationEntry | None = None
    high: CalibrationEntry | None = None
    route: CalibrationEntry | None = None
    cascade: CalibrationEntry | None = None


class ClassifierFile(_Strict):
    """The whole JSON document (format `tandem-sufficiency-classifier`, version 1)."""

    format: Literal["tandem-sufficiency-classifier"]
    version: Literal[1]
    kind: Kind
    features: list[str] = Field(min_length=1)
    normalization: Normalization | None = None
    params: Params
    models: ModelPair
    training: Training
    cv: CrossValidation | None = None
    efforts: dict[Literal["low", "medium", "high"], EffortPoint]
    route: Threshold | None = None
    cascade: Threshold | None = None
    calibration: Calibration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ClassifierFile:
        n = len(self.features)
        unknown = [f for f in self.features if f not in _FEATURE_GROUP]
        if unknown:
            raise ValueError(f"features this version of tandem does not compute: {', '.join(unknown)}")
        if len(set(self.features)) != n:
            raise ValueError("features: duplicate names")
        if missing := [e for e in EFFORTS if e not in self.efforts]:
            raise ValueError(f"efforts: missing {', '.join(missing)}")
        if self.normalization is not None and (len(self.normalization.mean) != n or
                                               len(self.normalization.scale) != n):
            raise ValueError(f"normalization: mean and scale need {n} values (one per feature)")
        if self.kind == "logistic":
            if not isinstance(self.params, LogisticParams):
                raise ValueError("params: a logistic model needs coef and intercept")
            if len(self.params.coef) != n:
                raise ValueError(f"params.coef: {len(self.params.coef)} weights for {n} features")
        else:
            if not isinstance(self.params, GbdtParams):
                raise ValueError("params: a gbdt model needs init, learning_rate and trees")
            for t, tree in enumerate(self.params.trees):
                bad = [f for f, lo in zip(tree.feature, tree.left, strict=True) if lo != -1 and not 0 <= f < n]
                if bad:
                    raise ValueError(f"params.trees.{t}: feature index {bad[0]} out of range (0..{n - 1})")
        return self


# --- the policy ----------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|
    return out


class _TreeArrays:
    def __init__(self, t: Tree) -> None:
        self.feature = np.asarray(t.feature, dtype=np.int64)
        self.threshold = np.asarray(t.threshold, dtype=np.float64)
        self.left = np.asarray(t.left, dtype=np.int64)
        self.right = np.asarray(t.right, dtype=np.int64)
        self.value = np.asarray(t.value, dtype=np.float64)
        self.lists = (t.feature, t.threshold, t.left, t.right, t.value)

    def predict_one(self, x: list[float]) -> float:
        feature, threshold, left, right, value = self.lists
        node = 0
        while left[node] != -1:
            node = left[node] if x[feature[node]] <= threshold[node] else right[node]
        return value[node]

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        while True:
            inner = self.left[node] != -1
            if not inner.any():
                return np.asarray(self.value[node])
            f = np.where(inner, self.feature[node], 0)
            go_left = x[rows, f] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)


def _same_model(expected: ModelRef, actual: ModelInfo | Mapping[str, Any]) -> bool:
    if isinstance(actual, ModelInfo):
        name, checksum = actual.name, actual.checksum
    else:
        name, checksum = str(actual.get("name", "")), str(actual.get("checksum", "") or "")
    if expected.checksum and checksum:
        return expected.checksum == checksum
    return expected.name == name


class SufficiencyClassifier(PolicyBase):
    """Probability that the SLM answers correctly from the current checkpoint (a `StopPolicy`)."""

    def __init__(self, spec: ClassifierFile, *, name: str | None = None) -> None:
        self.spec = spec
        self.kind: Kind = spec.kind
        self.features: tuple[str, ...] = tuple(spec.features)
        self.name = name or f"classifier:{spec.kind}"
        # the pipeline skips the SLM's shadow passes when no feature needs them
        self.uses_shadow = any(f in _SHADOW_FEATURES for f in self.features)
        self.uses_trial = any(f in FEATURE_GROUPS["trial"] for f in self.features)
        norm = spec.normalization
        self._mean = np.asarray(norm.mean, dtype=np.float64) if norm else None
        self._scale = np.asarray(norm.scale, dtype=np.float64) if norm else None
        p = spec.params
        if isinstance(p, LogisticParams):
            self._coef = np.asarray(p.coef, dtype=np.float64)
            self._intercept = float(p.intercept)
        else:
            self._trees = [_TreeArrays(t) for t in p.trees]
            self._init, self._lr = float(p.init), float(p.learning_rate)

    # -- inference
    @property
    def feature_groups(self) -> list[str]:
        """Feature groups the classifier reads (in the order of `FEATURE_GROUPS`)."""
        used = {_FEATURE_GROUP[f] for f in self.features}
        return [g for g in FEATURE_GROUPS if g in used]

    def missing(self, available: Iterable[str]) -> list[str]:
        have = set(available)
        return [f for f in self.features if f not in have]

    def vector(self, features: Mapping[str, float]) -> np.ndarray:
        """The classifier's inputs from a feature dict (extra keys are ignored)."""
        missing = self.missing(features)
        if missing:
            groups = sorted({_FEATURE_GROUP[f] for f in missing})
            shadow = [g for g in groups if g in SHADOW_GROUPS]
            hint = (" The SLM's shadow pass provides these: its backend must score prompts (an "
                    "OpenAI-style chat endpoint cannot), or train a classifier without them with "
                    "`tandem train fit --feature-groups llm_stream,progress`.") if shadow else ""
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise ConfigError(f"classifier {self.name!r} needs features the running pipeline does not provide "
                              f"(groups {', '.join(groups)}): {shown}.{hint}")
        x = np.asarray([features[f] for f in self.features], dtype=np.float64)
        if not np.isfinite(x).all():
            bad = [f for f, v in zip(self.features, x, strict=True) if not math.isfinite(v)]
            raise InputError(f"non-finite feature value(s): {', '.join(bad)}")
        return x

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Log-odds for a matrix of inputs (rows in `features` order)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[1] != len(self.features):
            raise InputError(f"expected {len(self.features)} feature columns, got {x.shape[1]}")
        if self._mean is not None and self._scale is not None:
            x = (x - self._mean) / self._scale
        if self.kind == "logistic":
            out: np.ndarray = x @ self._coef + self._intercept
            return out
        x32 = x.astype(np.float32).astype(np.float64)  # the trees' split thresholds are float32 cuts
        raw = np.full(len(x32), self._init, dtype=np.float64)
        for tree in self._trees:
            raw += self._lr * tree.predict(x32)
        return raw

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(the SLM is right) for a matrix of inputs (rows in `features` order)."""
        return _sigmoid(self.decision(x))

    def sufficiency(self, features: dict[str, float]) -> float:
        x = self.vector(features)
        if self.kind == "logistic":
            return float(self.predict_proba(x[None, :])[0])
        # one row through the trees in plain Python: the same comparisons and sums as `decision`
        if self._mean is not None and self._scale is not None:
            x = (x - self._mean) / self._scale
        x32 = x.astype(np.float32).astype(np.float64).tolist()
        raw = self._init
        for tree in self._trees:
            raw += self._lr * tree.predict_one(x32)
        return float(_sigmoid(np.asarray([raw]))[0])

    # -- operating points
    def stop_rule(self) -> StopRule:
        return StopRule({
            e: EffortSetting(p.max_budget, p.threshold, dict(p.stage_thresholds), p.finish)
            for e, p in self.spec.efforts.items()
        })

    @property
    def route_threshold(self) -> float | None:
        return self.spec.route.threshold if self.spec.route else None

    @property
    def cascade_threshold(self) -> float | None:
        return self.spec.cascade.threshold if self.spec.cascade else None

    # -- model pair
    def check_models(self, llm: ModelInfo | Mapping[str, Any] | None = None,
                     slm: ModelInfo | Mapping[str, Any] | None = None) -> bool:
        """Warn (`ModelPairWarning`) when used with another model pair (by checksum, else name)."""
        ok = True
        for role, expected, actual in (("LLM", self.spec.models.llm, llm), ("SLM", self.spec.models.slm, slm)):
            prefix = "llm_ent_" if role == "LLM" else "slm_"
            uses_entropy = any(f.startswith(prefix) and "_ent_" in f for f in self.features)
            if isinstance(actual, ModelInfo) and uses_entropy and actual.capabilities.entropy != expected.entropy:
                raise ConfigError(
                    f"classifier {self.name!r} was trained on {expected.entropy} entropies of the {role}, but "
                    f"{actual.name!r} gives {actual.capabilities.entropy} ones: retrain it on this backend "
                    "or without entropy features")
            if actual is None or _same_model(expected, actual):
                continue
            got = actual.name if isinstance(actual, ModelInfo) else actual.get("name")
            warnings.warn(f"classifier {self.name!r} was trained for {role} {expected.name!r}, not {got!r}: "
                          "its probabilities and thresholds may not transfer", ModelPairWarning, stacklevel=3)
            ok = False
        return ok

    # -- files
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = self.spec.model_dump(mode="json")
        return d

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(dumps(self.to_dict()) + "\n", encoding="utf-8")
        os.replace(tmp, out)
        return out

    def replace(self, **changes: Any) -> SufficiencyClassifier:
        """A copy with top-level fields of the file replaced (validated again)."""
        data = self.spec.model_dump(mode="python")
        data.update(changes)
        return SufficiencyClassifier(_validate(data, "classifier"), name=self.name)


def dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one key per line and arrays of numbers or strings kept on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


# --- loading -------------------------------------------------------------------------------------


def _validate(data: Any, source: str) -> ClassifierFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a classifier file is a JSON object")
    if data.get("format") != FORMAT:
        raise ConfigError(f"{source}: not a tandem classifier file (format {data.get('format')!r}, "
                          f"expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ConfigError(f"{source}: unsupported classifier file version {data.get('version')!r}; this "
                          f"version of tandem reads version {VERSION}")
    try:
        return ClassifierFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, "classifier file", limit=6)) from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"classifier file not found: {path}")
    raw = path.read_bytes()
    if raw[:1] == b"\x80":  # the opcode every pickle since protocol 2 starts with
        raise ConfigError(f"{path}: looks like a pickle; classifiers are read from JSON only, never unpickled")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON classifier file ({exc})") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def classifier_from_dict(data: Any, *, source: str = "classifier", name: str | None = None,
                         ) -> SufficiencyClassifier:
    return SufficiencyClassifier(_validate(data, source), name=name)


def load_classifier(path: str | os.PathLike[str], *, llm: ModelInfo | None = None,
                    slm: ModelInfo | None = None) -> SufficiencyClassifier:
    """Read and validate a classifier file. Raises ConfigError on anything unexpected; warns
    (`ModelPairWarning`) when `llm`/`slm` are given and differ from the pair it was trained for."""
    p = Path(path)
    clf = SufficiencyClassifier(_validate(_read_json(p), str(p)), name=f"classifier:{p.name}")
    clf.check_models(llm, slm)
    return clf


def _shipped_dir() -> Any:
    return resources.files("tandem").joinpath("data", "classifiers")


def shipped_classifier_for(llm: ModelInfo, slm: ModelInfo) -> Path | None:
    """The classifier shipped in the package for this model pair (checksums, else names), if any.

    Files are tried in name order; one whose models match by checksum wins over a match by name.
    """
    folder = _shipped_dir()
    if not folder.is_dir():
        return None
    by_name: Path | None = None
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        path = Path(str(entry))
        try:
            models = ModelPair.model_validate(json.loads(entry.read_text(encoding="utf-8"))["models"])
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise ConfigError(f"shipped classifier {entry.name} is unreadable: {exc}") from None
        if not (_same_model(models.llm, llm) and _same_model(models.slm, slm)):
            continue
        if models.llm.checksum and llm.checksum and models.slm.checksum and slm.checksum:
            return path
        by_name = by_name or path
    return by_name
