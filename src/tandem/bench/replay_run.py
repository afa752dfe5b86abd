"""Replay whole probe runs: outcomes per method plus the oracle frontier's per-problem options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..policy import StopRule
from ..types import StopPolicy
from .probe_records import ProbeRecord, kept_row, probe_records
from .records import Outcome
from .replay import PairParams, options, replay, replay_cascade, replay_route
from .store import read_manifest, read_records


def default_methods(budgets: Sequence[int], with_classifier: bool, *, cascade: bool = False,
                    thinks: bool = False) -> list[str]:
    """slm, llm, fixed:N per budget, (afterthink for a reasoning LLM,) oracle; with a classifier also
    route and tandem per effort; `cascade`: the cascade at the classifier's calibrated threshold."""
    methods = ["slm", "llm"] + [f"fixed:{b}" for b in budgets] + (["afterthink"] if thinks else []) + ["oracle"]
    if with_classifier:
        methods += ["route", "tandem:low", "tandem:medium", "tandem:high"]
    if cascade:
        methods.append("cascade")
    return methods


def replay_method(rec: ProbeRecord, method: str, p: PairParams, *, handover: str, budgets: tuple[int, ...],
                  policy: StopPolicy | None = None, rule: StopRule | None = None,
                  route_threshold: float | None = None, cascade_threshold: float | None = None) -> Outcome:
    """`replay` plus the calibrated operating points: `route` at `route_threshold` (when given;
    else the medium effort's checkpoint-0 threshold) and `cascade` at `cascade_threshold`."""
    if method == "route" and route_threshold is not None:
        if policy is None:
            raise ConfigError("method 'route' needs a classifier")
        return replay_route(rec, p, policy, route_threshold)
    if method == "cascade":
        if cascade_threshold is None:
            raise ConfigError("method 'cascade' needs a classifier with a calibrated cascade threshold "
                              "(tandem train calibrate); or give the threshold: cascade:T")
        return replay_cascade(rec, p, cascade_threshold)
    return replay(rec, method, p, handover=handover, policy=policy, rule=rule, budgets=budgets)


def load_probe(run_dir: str | Path) -> tuple[dict[str, Any], list[ProbeRecord]]:
    man = read_manifest(run_dir)
    if man.get("kind") != "probe":
        raise InputError(f"{run_dir} is not a probe run")
    return man, probe_records(read_records(run_dir), str(run_dir))


def replay_dirs(dirs: Sequence[Path], methods: str | None, classifier: Path | None, *,
                finished_only: bool = False, complete_only: bool = False,
                ) -> tuple[list[Outcome], dict[str, list[tuple[float, bool]]], list[str]]:
    """Replay every method on the probe tables in `dirs`; `finished_only`: only the problems whose
    reasoning LLM closed its thought (where the LLM alone is fully known); `complete_only`: only those
    whose LLM-alone answer is also whole (not cut by its token limit)."""
    policy: StopPolicy | None = None
    rule: StopRule | None = None
    route_thr = cascade_thr = None
    clf = None
    if classifier is not None:
        from ..classifier import load_classifier

        clf = load_classifier(classifier)
        policy, rule = clf, clf.stop_rule()
        route_thr, cascade_thr = clf.route_threshold, clf.cascade_threshold
    outcomes: list[Outcome] = []
    frontier: dict[str, list[tuple[float, bool]]] = {}
    notes: list[str] = []
    for d in dirs:
        man, recs = load_probe(d)
        thinks = str(man.get("probe_version", "")) >= "probe-v2"
        n_all = len(recs)
        recs = [r for r in recs if "error" in r or kept_row(r, finished_only=finished_only,
                                                             complete_only=complete_only)]
        p = PairParams(man["llm"]["n_params"], man["slm"]["n_params"])
        cfg = man["config"]
        budgets = tuple(cfg["stage_budgets"])
        if clf is not None:
            clf.check_models(man["llm"], man["slm"])
        names = [m.strip() for m in methods.split(",")] if methods else \
            default_methods(budgets, policy is not None, cascade=cascade_thr is not None, thinks=thinks)
        errors = 0
        for rec in recs:
            if "error" in rec:
                errors += 1
                outcomes += [Outcome(problem_id=rec["problem_id"], method=m, error=rec["error"], replayed=True)
                             for m in names]
                continue
            for m in names:
                outcomes.append(replay_method(rec, m, p, handover=cfg["handover"], policy=policy, rule=rule,
                                              budgets=budgets, route_threshold=route_thr,
                                              cascade_threshold=cascade_thr))
            frontier[rec["problem_id"]] = [(o.flops_total, o.correct) for o in options(rec, p)]
        kept = (f" (of {n_all}: those whose LLM answer is complete)" if complete_only else
                f" (of {n_all}: those whose thought closed)" if finished_only else "")
        notes.append(f"{d}: {len(recs)} problems{kept} replayed from a probe table ({man['dataset']}, "
                     f"{cfg['handover']} hand-over, budgets {list(budgets)}, LLM {man['llm']['name']}, "
                     f"SLM {man['slm']['name']}){f', {errors} probe errors' if errors else ''}")
    if clf is not None:
        route_note = (f"calibrated route threshold {route_thr:g}" if route_thr is not None
                      else "no calibrated route threshold: `route` uses the medium effort's checkpoint-0 threshold")
        cascade_note = f", cascade threshold {cascade_thr:g} (SLM mean log-prob)" if cascade_thr is not None else ""
        notes.append(f"classifier {classifier} ({clf.kind}): {route_note}{cascade_note}")
    return outcomes, frontier, notes
