"""Run probes and live evaluations into run stores, resumably, with a progress bar.

One request is in flight per embedded model (llama.cpp is not re-entrant and two processes on
two cores slow each other down), so samples run one after another: what is measured as wall
time is then the method's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import TandemError
from ..pipeline import Tandem
from ..prompts import PROMPT_VERSION
from ..types import Backend, Grade, Problem
from .probe import PROBE_VERSION, ProbeConfig, Prober
from .records import Outcome
from .store import RunStore, git_revision

Grader = Callable[[Problem, str], Grade]


def model_identity(b: Backend) -> dict[str, Any]:
    i = b.info
    return {"name": i.name, "n_params": i.n_params, "checksum": i.checksum, "tokenizer_id": i.tokenizer_id,
            "chat_template_id": i.chat_template_id}


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console or Console(stderr=True), transient=False,
    )


def run_probe(problems: Sequence[Problem], llm: Backend, slm: Backend, grader: Grader, store: RunStore,
              cfg: ProbeConfig, *, dataset: str, grader_name: str, console: Console | None = None) -> int:
    """Probe every problem not yet in the store; return how many were added."""
    manifest = {
        "kind": "probe", "probe_version": PROBE_VERSION, "prompt_version": PROMPT_VERSION,
        "llm": model_identity(llm), "slm": model_identity(slm), "config": asdict(cfg),
        "dataset": dataset, "grader": grader_name, "problem_ids": [p.id for p in problems],
        "git_revision": git_revision(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    done = store.open(manifest)
    todo = [p for p in problems if p.id not in done]
    prober, added, errors = Prober(llm, slm, grader, cfg), 0, 0
    right = {"slm": 0, "llm": 0}
    with _progress(console) as bar:
        task = bar.add_task(f"probe {dataset}", total=len(problems), completed=len(problems) - len(todo), status="")
        for p in todo:
            try:
                rec = prober.probe(p)
            except TandemError as exc:  # recorded and counted apart, never graded
                rec, errors = {"problem_id": p.id, "error": f"{type(exc).__name__}: {exc}"}, errors + 1
            store.append(p.id, rec)
            added += 1
            if "error" not in rec:
                right["slm"] += rec["slm_alone"]["grade"]["correct"]
                right["llm"] += (rec["llm_solve"] or rec["llm"])["grade"]["correct"]
            bar.update(task, advance=1, status=f"slm {right['slm']}/{added - errors}  llm {right['llm']}/"
                                                f"{added - errors}  errors {errors}")
    return added


def run_live(problems: Sequence[Problem], tandem: Tandem, methods: Iterable[str], grader: Grader,
             store: RunStore, *, dataset: str, grader_name: str, effort: str | None = None,
             console: Console | None = None, cold: bool = True) -> int:
    """Run each method live on each problem; store one Outcome per (problem, method)."""
    methods = list(methods)
    cfg = asdict(tandem.config)
    manifest = {
        "kind": "live", "prompt_version": PROMPT_VERSION, "llm": model_identity(tandem.llm),
        "slm": model_identity(tandem.slm), "config": cfg, "policy": tandem.policy.name, "methods": methods,
        "effort": effort or tandem.config.effort, "dataset": dataset, "grader": grader_name,
        "problem_ids": [p.id for p in problems], "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    done = store.open(manifest)
    todo = [(p, m) for p in problems for m in methods if f"{p.id}|{m}" not in done]
    added = 0
    stats: dict[str, list[int]] = {m: [0, 0] for m in methods}
    with _progress(console) as bar:
        task = bar.add_task(f"eval {dataset}", total=len(problems) * len(methods),
                            completed=len(problems) * len(methods) - len(todo), status="")
        for p, m in todo:
            if cold:
                for b in (tandem.llm, tandem.slm):
                    getattr(b, "reset_cache", lambda: None)()
            out = _live_one(tandem, p, m, grader, effort)
            store.append(f"{p.id}|{m}", out.to_dict())
            added += 1
            if out.error is None:
                stats[m][0] += out.correct
                stats[m][1] += 1
            bar.update(task, advance=1, status="  ".join(f"{k} {a}/{n}" for k, (a, n) in stats.items()))
    return added


def _live_one(tandem: Tandem, p: Problem, method: str, grader: Grader, effort: str | None) -> Outcome:
    name = method
    kwargs: dict[str, Any] = {"task": p.task}
    if method.startswith("tandem:"):
        method, kwargs["effort"] = "tandem", method.split(":", 1)[1]
    elif effort:
        kwargs["effort"] = effort
    try:
        r = tandem.solve(p.question, method=method, **kwargs)
    except TandemError as exc:
        return Outcome(problem_id=p.id, method=name, gold=p.answer, error=f"{type(exc).__name__}: {exc}")
    g = grader(p, r.text)
    c = r.cost
    llm, slm = c.models.get("llm"), c.models.get("slm")
    return Outcome(
        problem_id=p.id, method=name, correct=g.correct, answer=g.extraction.answer if g.extraction else None,
        gold=p.answer, extraction_rule=g.extraction.rule if g.extraction else "none", grade_reason=g.reason,
        truncated=r.truncated, stop_reason=r.stop_reason, handover_tokens=r.handover_tokens,
        llm_prompt_tokens=llm.input_tokens if llm else 0, llm_generated_tokens=llm.generated_tokens if llm else 0,
        slm_prompt_tokens=slm.input_tokens if slm else 0, slm_generated_tokens=slm.generated_tokens if slm else 0,
        flops_total=c.flops_total, flops_generated=c.flops_generated, wall_seconds=c.wall_seconds,
        extra={"text": r.text, "llm_text": r.llm_text, "slm_text": r.slm_text,
               "checkpoints": [{"stage": ck.stage, "llm_tokens": ck.llm_tokens, "p": ck.probability,
                                "handover": ck.handover, "reason": ck.reason} for ck in r.checkpoints],
               "phases": c.phases, "cancel_latency_s": r.cancel_latency_s},
    )
