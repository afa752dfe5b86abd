"""Replay whole probe runs: outcomes per method plus the oracle frontier's per-problem options."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from .records import Outcome
from .replay import PairParams, options, replay
from .store import read_manifest, read_records


def default_methods(budgets: Sequence[int], with_classifier: bool) -> list[str]:
    methods = ["slm", "llm"] + [f"fixed:{b}" for b in budgets] + ["oracle"]
    if with_classifier:
        methods += ["route", "tandem:low", "tandem:medium", "tandem:high"]
    return methods


def load_probe(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    man = read_manifest(run_dir)
    if man.get("kind") != "probe":
        raise InputError(f"{run_dir} is not a probe run")
    return man, list(read_records(run_dir))


def replay_dirs(dirs: Sequence[Path], methods: str | None, classifier: Path | None,
                ) -> tuple[list[Outcome], dict[str, list[tuple[float, bool]]], list[str]]:
    policy = rule = None
    if classifier is not None:
        from ..classifier import load_classifier

        clf = load_classifier(classifier)
        policy, rule = clf, clf.stop_rule()
    outcomes: list[Outcome] = []
    frontier: dict[str, list[tuple[float, bool]]] = {}
    notes: list[str] = []
    for d in dirs:
        man, recs = load_probe(d)
        p = PairParams(man["llm"]["n_params"], man["slm"]["n_params"])
        cfg = man["config"]
        budgets = tuple(cfg["stage_budgets"])
        names = [m.strip() for m in methods.split(",")] if methods else default_methods(budgets, policy is not None)
        errors = 0
        for rec in recs:
            if "error" in rec:
                errors += 1
                outcomes += [Outcome(problem_id=rec["problem_id"], method=m, error=rec["error"], replayed=True)
                             for m in names]
                continue
            for m in names:
                outcomes.append(replay(rec, m, p, handover=cfg["handover"], policy=policy, rule=rule,
                                       budgets=budgets))
            frontier[rec["problem_id"]] = [(o.flops_total, o.correct) for o in options(rec, p)]
        notes.append(f"{d}: {len(recs)} problems replayed from a probe table ({man['dataset']}, "
                     f"{cfg['handover']} hand-over, budgets {list(budgets)}, LLM {man['llm']['name']}, "
                     f"SLM {man['slm']['name']}){f', {errors} probe errors' if errors else ''}")
    return outcomes, frontier, notes
