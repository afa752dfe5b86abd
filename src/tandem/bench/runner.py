"""Run probes and live evaluations into run stores, resumably, with a progress bar.

By default samples run one after another: one request is in flight per embedded model (llama.cpp
is not re-entrant, and two processes on two cores slow each other down), and what is measured as
wall time is the method's own. A live run over backends that take concurrent calls (HTTP
endpoints) may keep up to `concurrency` samples in flight; its wall times then include queueing
at the endpoints, and its manifest says so. Probes always run serially (they measure wall time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import capabilities
from ..errors import ConfigError, TandemError
from ..methods import Method
from ..pipeline import Tandem, config_dict
from ..result import TandemResult
from ..types import Backend, Grade, Problem
from .probe import PROBE_VERSION, PROBE_VERSION_THINK, ProbeConfig, Prober
from .probe_records import ProbeRecord, error_record
from .records import Outcome
from .store import RunStore, git_revision

Grader = Callable[[Problem, str], Grade]
T = TypeVar("T")
R = TypeVar("R")


def model_identity(b: Backend) -> dict[str, Any]:
    """A model as a run's manifest names it; its role's sampling values only when it fixes some (so that
    runs recorded before they could be set keep their identity)."""
    i = b.info
    ident = {"name": i.name, "n_params": i.n_params, "checksum": i.checksum, "tokenizer_id": i.tokenizer_id,
             "chat_template_id": i.chat_template_id}
    if i.sampling:
        ident["sampling"] = dict(i.sampling)
    return ident


def entropy_kinds(llm: Backend, slm: Backend) -> dict[str, str]:
    """How each model's entropies are measured ("exact", "topk" or "none"): features trained on one kind
    do not transfer to another."""
    return {"llm": llm.info.capabilities.entropy, "slm": slm.info.capabilities.entropy}


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console or Console(stderr=True), transient=False,
    )


def run_probe(problems: Sequence[Problem], llm: Backend, slm: Backend, grader: Grader, store: RunStore,
              cfg: ProbeConfig, *, dataset: str, grader_name: str, console: Console | None = None,
              purpose: str | None = None, concurrency: int = 1) -> int:
    """Probe every problem not yet in the store; return how many were added. `purpose` (train,
    calibration, dev, test) says what the table may be used for, where the benchmark's split does not
    (recorded outputs exist only for test splits, so train and calibration rows come from them too).
    `concurrency` > 1 probes that many problems at once (backends that take concurrent calls only: an
    engine that batches is not bit-identical to one request at a time, so the manifest says so and a
    run is resumed at its own concurrency)."""
    check_concurrency(concurrency, llm, slm)
    manifest = {
        "kind": "probe", "probe_version": PROBE_VERSION_THINK if llm.info.thinks else PROBE_VERSION,
        "prompt_version": cfg.prompts.version,
        "llm": model_identity(llm), "slm": model_identity(slm), "entropy": entropy_kinds(llm, slm),
        "config": config_dict(cfg),
        "dataset": dataset, "grader": grader_name, "problem_ids": [p.id for p in problems],
        "concurrency": concurrency, **({"purpose": purpose} if purpose else {}),
        "git_revision": git_revision(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    done = store.open(manifest)
    try:  # the run directory stays locked while this process writes it
        return _probe_all([p for p in problems if p.id not in done], len(problems), Prober(llm, slm, grader, cfg),
                          store, dataset, console, concurrency)
    finally:
        store.close()


def _probe_all(todo: Sequence[Problem], total: int, prober: Prober, store: RunStore, dataset: str,
               console: Console | None, concurrency: int = 1) -> int:
    added, errors = 0, 0
    right = {"slm": 0, "llm": 0}
    tokens, t0 = {"llm": 0}, time.perf_counter()

    def one(p: Problem) -> ProbeRecord:
        try:
            return prober.probe(p)
        except TandemError as exc:  # recorded and counted apart, never graded
            return error_record(p.id, f"{type(exc).__name__}: {exc}")

    with _progress(console) as bar:
        task = bar.add_task(f"probe {dataset}", total=total, completed=total - len(todo), status="")
        for p, rec in _in_flight(todo, one, concurrency):
            errors += "error" in rec
            store.append(p.id, rec)
            added += 1
            if "error" not in rec:
                right["slm"] += rec["slm_alone"]["grade"]["correct"]
                right["llm"] += (rec["llm_solve"] or rec["llm"])["grade"]["correct"]
            tokens["llm"] += 0 if "error" in rec else rec["llm"]["generated"]
            n_ok = added - errors
            bar.update(task, advance=1, status=f"slm {right['slm']}/{n_ok}  llm {right['llm']}/{n_ok}  "
                                                f"LLM tokens/problem {tokens['llm'] / max(n_ok, 1):.0f}  "
                                                f"{(time.perf_counter() - t0) / added:.0f} s/problem  errors {errors}")
    return added


max_concurrency = capabilities.max_concurrency  # also importable from here, where it was first defined


def _in_flight(items: Sequence[T], work: Callable[[T], R], concurrency: int) -> Iterator[tuple[T, R]]:
    """(item, result) for every item, each as soon as it is done, at most `concurrency` at a time."""
    if concurrency <= 1:
        for item in items:
            yield item, work(item)
        return
    queue = list(reversed(items))
    running: dict[Future[R], T] = {}
    with ThreadPoolExecutor(concurrency, thread_name_prefix="tandem-eval") as ex:
        try:
            while True:
                while len(running) < concurrency and queue:
                    item = queue.pop()
                    running[ex.submit(work, item)] = item
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield running.pop(f), f.result()
        finally:  # interrupted: start nothing more (samples in flight are not stored; a resume redoes them)
            for f in running:
                f.cancel()


def sample_key(problem_id: str, method: str, sample: int, samples: int) -> str:
    """A live record's key: `id|method`, and `id|method|s{i}` for sample i of a run of several samples
    per problem (a one-sample run keeps the keys runs had before, so they resume)."""
    return f"{problem_id}|{method}" if samples == 1 else f"{problem_id}|{method}|s{sample}"


def greedy_roles(tandem: Tandem) -> list[str]:
    """The roles that decode greedily (temperature 0, their own or the run's), or replay a recording:
    their samples are all one."""
    out = []
    for role, b in (("llm", tandem.llm), ("slm", tandem.slm)):
        temperature = b.info.sampling.get("temperature", tandem.config.decoding.temperature)
        if b.info.capabilities.replayed or not temperature:
            out.append(role)
    return out


def check_concurrency(concurrency: int, *backends: Backend) -> None:
    """Refuse a concurrency the backends cannot take (embedded llama.cpp models: one call at a time)."""
    if concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    limit = max_concurrency(*backends)
    if limit is not None and concurrency > limit:
        raise ConfigError(f"--concurrency {concurrency}: these backends take {limit} call(s) at a time "
                          "(embedded llama.cpp models are not re-entrant); use HTTP endpoints for more")


def run_live(problems: Sequence[Problem], tandem: Tandem, methods: Iterable[str], grader: Grader,
             store: RunStore, *, dataset: str, grader_name: str, effort: str | None = None,
             console: Console | None = None, cold: bool = True, concurrency: int = 1, samples: int = 1) -> int:
    """Run each method live on each problem; store one Outcome per (problem, method), each as it finishes.

    `concurrency` > 1 keeps that many samples in flight (backends that take concurrent calls only);
    caches are then not reset between samples. `samples` > 1 runs each (problem, method) that many
    times, sample i with the run's seed + i (its Outcome's `extra` says `sample` and `seed`)."""
    methods = list(methods)
    check_concurrency(concurrency, tandem.llm, tandem.slm)
    if samples < 1:
        raise ConfigError("--samples must be at least 1")
    cfg = config_dict(tandem.config)
    manifest = {
        "kind": "live", "prompt_version": tandem.config.prompts.version, "llm": model_identity(tandem.llm),
        "slm": model_identity(tandem.slm), "entropy": entropy_kinds(tandem.llm, tandem.slm), "config": cfg,
        "policy": tandem.policy.name, "methods": methods,
        "effort": effort or tandem.config.effort, "dataset": dataset, "grader": grader_name,
        "concurrency": concurrency, "problem_ids": [p.id for p in problems], "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if samples > 1:  # a one-sample run's manifest is what it was before samples could be asked for
        manifest["samples"] = samples
    for m in methods:  # a method that cannot run is refused up front, not stored as an error per sample
        tandem.check_method(_solve_args(m, effort)[0])
    same = greedy_roles(tandem) if samples > 1 else []
    if same and console is not None:
        console.print(f"note: the {' and the '.join(r.upper() for r in same)} decode(s) greedily or replay a "
                      f"recording: {'their' if len(same) > 1 else 'its'} part of the {samples} samples is one draw "
                      "(set a temperature: [pipeline] or a role's, e.g. --llm-sampling temperature=0.6)")
    done = store.open(manifest)
    try:  # the run directory stays locked while this process writes it
        todo = [(p, m, i) for p in problems for m in methods for i in range(samples)
                if sample_key(p.id, m, i, samples) not in done]
        return _run_all(todo, len(problems) * len(methods) * samples, tandem, methods, grader, store,
                        dataset=dataset, effort=effort, console=console, cold=cold, concurrency=concurrency,
                        samples=samples)
    finally:
        store.close()


def _run_all(todo: Sequence[tuple[Problem, str, int]], total: int, tandem: Tandem, methods: Sequence[str],
             grader: Grader, store: RunStore, *, dataset: str, effort: str | None, console: Console | None,
             cold: bool, concurrency: int, samples: int = 1) -> int:
    added = 0
    stats: dict[str, list[float]] = {m: [0, 0, 0.0] for m in methods}  # right, scored, TFLOPs
    base_seed = tandem.config.decoding.seed

    def one(item: tuple[Problem, str, int]) -> TandemResult | TandemError:
        if cold and concurrency == 1:
            for b in (tandem.llm, tandem.slm):
                capabilities.reset_cache(b)
        return _solve_one(tandem, item[0], item[1], effort, base_seed + item[2] if samples > 1 else None)

    with _progress(console) as bar:
        task = bar.add_task(f"eval {dataset}", total=total, completed=total - len(todo), status="")
        for (p, m, i), solved in _in_flight(todo, one, concurrency):
            out = _graded(p, m, solved, grader,  # here, in this thread: graders may rely on signals
                          tandem.llm.info.capabilities.replayed)
            if samples > 1:
                out.extra.update(sample=i, seed=base_seed + i)
            store.append(sample_key(p.id, m, i, samples), out.to_dict())
            added += 1
            if out.error is None:
                stats[m][0] += out.correct
                stats[m][1] += 1
                stats[m][2] += out.flops_total / 1e12
            bar.update(task, advance=1, status="  ".join(
                f"{k} {a:.0f}/{n:.0f}" + (f" {f / n:.3g}T" if n else "") for k, (a, n, f) in stats.items()))
    return added


def _solve_args(method: str, effort: str | None) -> tuple[str, dict[str, Any]]:
    """The pipeline method and overrides for a run's method name (`tandem:EFFORT` sets the effort)."""
    m = Method.parse(method)
    if m.kind == "tandem" and m.effort is not None:
        return "tandem", {"effort": m.effort}
    return method, ({"effort": effort} if effort else {})


def _solve_one(tandem: Tandem, p: Problem, method: str, effort: str | None,
               seed: int | None = None) -> TandemResult | TandemError:
    name, kwargs = _solve_args(method, effort)
    if seed is not None:
        kwargs["seed"] = seed
    try:
        return tandem.solve(p.question, method=name, task=p.task, **kwargs)
    except TandemError as exc:
        return exc


def _texts(r: TandemResult, replayed: bool) -> dict[str, Any]:
    """The texts a live record keeps: where the LLM replays a recording, none of them (the SLM may quote
    the thought it read), only their lengths."""
    if not replayed or r.method == "slm":
        return {"text": r.text, "llm_text": r.llm_text, "slm_text": r.slm_text}
    return {"text": None, "llm_text": None, "slm_text": None, "text_chars": len(r.text),
            "llm_chars": len(r.llm_text), "slm_chars": len(r.slm_text)}


def _graded(p: Problem, method: str, r: TandemResult | TandemError, grader: Grader,
            replayed: bool = False) -> Outcome:
    try:
        if isinstance(r, TandemError):
            raise r
        g = grader(p, r.text)
    except TandemError as exc:  # a run or a grading that failed: stored with its error, counted apart
        return Outcome(problem_id=p.id, method=method, gold=p.answer, error=f"{type(exc).__name__}: {exc}")
    c = r.cost
    llm, slm = c.models.get("llm"), c.models.get("slm")
    return Outcome(
        problem_id=p.id, method=method, correct=g.correct, answer=g.extraction.answer if g.extraction else None,
        gold=p.answer, extraction_rule=g.extraction.rule if g.extraction else "none", grade_reason=g.reason,
        truncated=r.truncated, stop_reason=r.stop_reason, handover_tokens=r.handover_tokens,
        llm_prompt_tokens=llm.input_tokens if llm else 0, llm_generated_tokens=llm.generated_tokens if llm else 0,
        slm_prompt_tokens=slm.input_tokens if slm else 0, slm_generated_tokens=slm.generated_tokens if slm else 0,
        flops_total=c.flops_total, flops_generated=c.flops_generated, wall_seconds=c.wall_seconds,
        extra={**_texts(r, replayed),
               "checkpoints": [{"stage": ck.stage, "llm_tokens": ck.llm_tokens, "p": ck.probability,
                                "handover": ck.handover, "reason": ck.reason} for ck in r.checkpoints],
               "phases": c.phases, "cancel_latency_s": r.cancel_latency_s},
    )
