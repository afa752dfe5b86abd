"""Probe records -> training rows.

One row per checkpoint a live run could consult:
- checkpoint 0 (before the LLM writes anything): features `ck0.features`, label = the SLM alone
  is right;
- every probe checkpoint k: features `checkpoints[k].features`, label = the SLM is right when it
  continues from that prefix.
Each row keeps its problem id (the group for cross-validation: rows of one problem never fall on
both sides of a fold), its stage and the LLM tokens written so far. Records with an `error` are
skipped and counted. The features are those `tandem.features.compute_features` wrote into the
probe table: the same code computes them live.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.probe_records import ProbeRecord, kept_row, probe_records
from ..bench.store import entropy_kinds_of, git_revision, read_manifest, read_records
from ..errors import ConfigError, InputError
from ..features import FEATURE_GROUPS

LABEL = ("the SLM's answer is graded correct when it starts from this checkpoint: alone at checkpoint 0, "
         "else continuing from (continue) or reading (hint) the LLM's prefix up to the checkpoint")
ALL_GROUPS: tuple[str, ...] = tuple(FEATURE_GROUPS)


def parse_groups(text: str | Sequence[str] | None) -> list[str]:
    """Feature group names (comma-separated or a list); None or 'all': every group."""
    if text is None:
        return list(ALL_GROUPS)
    names = [g.strip() for g in (text.split(",") if isinstance(text, str) else text) if g.strip()]
    if names == ["all"]:
        return list(ALL_GROUPS)
    unknown = [g for g in names if g not in FEATURE_GROUPS]
    if unknown or not names:
        raise ConfigError(f"unknown feature group(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from {', '.join(FEATURE_GROUPS)}")
    return [g for g in FEATURE_GROUPS if g in names]


def table_groups(tables: Sequence[ProbeTable]) -> list[str]:
    """The feature groups every checkpoint of the tables has (the default for fitting)."""
    from ..bench.replay import ck_features
    from ..features import available_groups

    have = set(FEATURE_GROUPS)
    for t in tables:
        for rec in t.records:
            for ck in [None, *rec["checkpoints"]]:
                have &= set(available_groups(ck_features(rec, ck)))
    if not have:
        raise InputError("the probe tables share no complete feature group")
    return [g for g in FEATURE_GROUPS if g in have]


def feature_names(groups: Sequence[str]) -> list[str]:
    return [n for g in parse_groups(list(groups)) for n in FEATURE_GROUPS[g]]


@dataclass
class ProbeTable:
    """One probe run: its manifest, its usable records, and how many failed."""

    path: Path
    manifest: dict[str, Any]
    records: list[ProbeRecord]
    errors: int

    @property
    def handover(self) -> str:
        return str(self.manifest["config"]["handover"])

    @property
    def budgets(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.manifest["config"]["stage_budgets"])

    @property
    def split(self) -> str:
        return str(self.manifest.get("dataset", "?"))

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "dataset": self.split, "handover": self.handover,
                "stage_budgets": list(self.budgets), "records": len(self.records) + self.errors,
                "errors": self.errors}


def _is_test_split(dataset: str) -> bool:
    # dataset labels look like "gsm8k/test[0:300]"
    return "/test[" in dataset or dataset.endswith("/test")


def load_tables(dirs: Sequence[str | Path], *, allow_test_split: bool = False,
                finished_only: bool = False, complete_only: bool = False) -> list[ProbeTable]:
    """Read probe runs; refuse test splits (unless allowed) and tables from different model pairs.
    `finished_only`: keep the problems whose reasoning LLM closed its thought (where the LLM alone is
    fully known); `complete_only`: of those, the ones whose LLM-alone answer was not cut either."""
    if not dirs:
        raise ConfigError("no probe tables given")
    tables = []
    for d in dirs:
        man = read_manifest(d)
        if man.get("kind") != "probe":
            raise InputError(f"{d} is not a probe run (manifest kind {man.get('kind')!r})")
        purpose = man.get("purpose")
        held_out = purpose in ("test", "dev") if purpose else _is_test_split(str(man.get("dataset", "")))
        if held_out and not allow_test_split:
            what = f"is marked for {purpose}" if purpose else f"holds a test split ({man.get('dataset')})"
            raise ConfigError(f"{d} {what}: such tables are never used to fit or calibrate (pass "
                              "--allow-test-split only for smoke checks)")
        recs, errors = [], 0
        for r in probe_records(read_records(d), str(d)):
            if "error" in r:
                errors += 1
            elif kept_row(r, finished_only=finished_only, complete_only=complete_only):
                recs.append(r)
        tables.append(ProbeTable(Path(d), man, recs, errors))
    first = tables[0].manifest
    for t in tables[1:]:
        kinds = [entropy_kinds_of(m) for m in (first, t.manifest)]
        if kinds[0] != kinds[1]:
            raise ConfigError(f"{t.path} measured entropies as {kinds[1]}, {tables[0].path} as {kinds[0]}: "
                              "features of one kind do not mix with the other's")
        for role in ("llm", "slm"):
            a, b = first[role], t.manifest[role]
            same = a.get("checksum") == b.get("checksum") if a.get("checksum") and b.get("checksum") \
                else a.get("name") == b.get("name")
            if not same:
                raise ConfigError(f"{t.path} was probed with {role.upper()} {b.get('name')!r}, {tables[0].path} "
                                  f"with {a.get('name')!r}: a classifier is trained for one model pair")
    return tables


def model_pair(table: ProbeTable) -> dict[str, Any]:
    """The model pair of a probe run, as a classifier file records it."""

    entropy = entropy_kinds_of(table.manifest)

    def ref(role: str) -> dict[str, Any]:
        m = table.manifest[role]
        return {"name": str(m.get("name", "")), "checksum": str(m.get("checksum") or ""),
                "n_params": int(m.get("n_params") or 0), "tokenizer_id": str(m.get("tokenizer_id") or ""),
                "chat_template_id": str(m.get("chat_template_id") or ""), "entropy": entropy[role]}

    return {"llm": ref("llm"), "slm": ref("slm")}


@dataclass
class Rows:
    """Training rows: X (rows x features), y (0/1), and per row its problem, stage and LLM tokens."""

    features: list[str]
    X: np.ndarray
    y: np.ndarray
    groups: list[str]
    stage: np.ndarray
    llm_tokens: np.ndarray
    tables: list[ProbeTable] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def problems(self) -> list[str]:
        return list(dict.fromkeys(self.groups))


def _row(features: dict[str, float], names: Sequence[str], where: str) -> list[float]:
    missing = [n for n in names if n not in features]
    if missing:
        raise InputError(f"{where}: the probe table lacks feature(s) {', '.join(missing[:6])}; train on the "
                         "feature groups it has (--feature-groups)")
    return [float(features[n]) for n in names]


def record_rows(rec: ProbeRecord, names: Sequence[str]) -> list[tuple[list[float], int, int, int]]:
    """(features, label, stage, llm tokens) for checkpoint 0 and every checkpoint of one record."""
    from ..bench.replay import ck_features

    pid = rec["problem_id"]
    out = [(_row(ck_features(rec, None), names, f"{pid} checkpoint 0"),
            int(bool(rec["slm_alone"]["grade"]["correct"])), 0, 0)]
    for ck in rec["checkpoints"]:
        out.append((_row(ck_features(rec, ck), names, f"{pid} stage {ck['stage']}"),
                    int(bool(ck["slm"]["grade"]["correct"])), int(ck["stage"]), int(ck["llm_tokens"])))
    return out


def build_rows(tables: Sequence[ProbeTable], groups: Sequence[str] | str | None = None, *,
               features: Sequence[str] | None = None) -> Rows:
    """One row per checkpoint; columns: the features of `groups`, or exactly `features` in their order
    (a fitted classifier's)."""
    if features is not None:
        names = list(features)
    else:
        names = feature_names(parse_groups(groups) if groups is not None else table_groups(tables))
    xs: list[list[float]] = []
    ys: list[int] = []
    pids: list[str] = []
    stages: list[int] = []
    toks: list[int] = []
    for t in tables:
        for rec in t.records:
            for x, y, s, k in record_rows(rec, names):
                xs.append(x)
                ys.append(y)
                pids.append(rec["problem_id"])
                stages.append(s)
                toks.append(k)
    if not xs:
        raise InputError("the probe tables hold no usable records")
    return Rows(names, np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.int64), pids,
                np.asarray(stages, dtype=np.int64), np.asarray(toks, dtype=np.int64), list(tables))


def training_description(rows: Rows, groups: Sequence[str], hyper: dict[str, Any], split: str | None) -> dict[str, Any]:
    from .. import __version__

    return {
        "probe_runs": [t.describe() for t in rows.tables],
        "split": split or "; ".join(dict.fromkeys(t.split for t in rows.tables)),
        "rows": len(rows), "positives": int(rows.y.sum()), "problems": len(rows.problems),
        "problem_ids": sorted(rows.problems), "label": LABEL, "feature_groups": list(groups),
        "hyperparameters": hyper, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_revision": git_revision(), "tandem_version": __version__,
    }
