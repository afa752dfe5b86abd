"""Replay against live: does a method replayed from probe tables give what the live run gave?

Each live outcome is paired with the same method replayed on the probe record of the same problem.
A pair agrees on the answer when both extracted the same final answer; the finer checks (hand-over
point, generated tokens per model) say where a disagreement starts. Wall times are compared as
means: live wall time is measured end to end, replayed wall time is summed from the probe's parts.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import capabilities
from ..errors import ConfigError, InputError
from ..policy import BudgetPolicy, StopRule
from ..types import StopPolicy
from .records import Outcome
from .replay import PairParams
from .replay_run import load_probe, replay_method
from .store import config_as_now


@dataclass(frozen=True)
class PairCheck:
    """One problem and method, live and replayed."""

    live: Outcome
    replayed: Outcome

    @property
    def same_answer(self) -> bool:
        return self.live.answer == self.replayed.answer

    @property
    def same_correct(self) -> bool:
        return self.live.correct == self.replayed.correct

    @property
    def same_handover(self) -> bool:
        return self.live.handover_tokens == self.replayed.handover_tokens

    @property
    def same_tokens(self) -> bool:
        lv, rp = self.live, self.replayed
        return (lv.llm_generated_tokens, lv.slm_generated_tokens) == (rp.llm_generated_tokens,
                                                                      rp.slm_generated_tokens)


@dataclass(frozen=True)
class MethodAgreement:
    method: str
    n: int
    same_answer: int
    same_correct: int
    same_handover: int
    same_tokens: int
    live_correct: int
    replayed_correct: int
    live_wall_s: float
    replayed_wall_s: float
    flops_ratio_median: float  # replayed over live total FLOPs, per problem


def replay_name(method: str, effort: str) -> str:
    """The replay method for a live method name (`tandem` ran at the run's effort)."""
    return f"tandem:{effort}" if method == "tandem" else method


def pair_outcomes(live: Iterable[Outcome], replayed: Mapping[tuple[str, str], Outcome], effort: str,
                  ) -> tuple[list[PairCheck], dict[str, int]]:
    """Pair live outcomes with replayed ones by (problem id, method); count what could not be paired."""
    checks: list[PairCheck] = []
    skipped = {"live_error": 0, "replay_error": 0, "not_in_probe": 0}
    for lv in live:
        if lv.error is not None:
            skipped["live_error"] += 1
            continue
        rp = replayed.get((lv.problem_id, replay_name(lv.method, effort)))
        if rp is None:
            skipped["not_in_probe"] += 1
        elif rp.error is not None:
            skipped["replay_error"] += 1
        else:
            checks.append(PairCheck(lv, rp))
    return checks, skipped


def agreement_by_method(checks: Sequence[PairCheck]) -> list[MethodAgreement]:
    rows = []
    for m in dict.fromkeys(c.live.method for c in checks):
        cs = [c for c in checks if c.live.method == m]
        ratios = [c.replayed.flops_total / c.live.flops_total for c in cs if c.live.flops_total > 0]
        rows.append(MethodAgreement(
            method=m, n=len(cs), same_answer=sum(c.same_answer for c in cs),
            same_correct=sum(c.same_correct for c in cs), same_handover=sum(c.same_handover for c in cs),
            same_tokens=sum(c.same_tokens for c in cs), live_correct=sum(c.live.correct for c in cs),
            replayed_correct=sum(c.replayed.correct for c in cs),
            live_wall_s=statistics.fmean(c.live.wall_seconds for c in cs),
            replayed_wall_s=statistics.fmean(c.replayed.wall_seconds for c in cs),
            flops_ratio_median=statistics.median(ratios) if ratios else float("nan"),
        ))
    return rows


def comparable(live_manifest: Mapping[str, Any], probe_manifest: Mapping[str, Any], where: str) -> None:
    """Refuse a probe table recorded with other models, hand-over mode, budgets or decoding."""
    for role in ("llm", "slm"):
        a, b = live_manifest.get(role, {}), probe_manifest.get(role, {})
        if (a.get("name"), a.get("checksum")) != (b.get("name"), b.get("checksum")):
            raise InputError(f"{where}: the {role} differs from the live run's ({b.get('name')} vs {a.get('name')})")
    # options added since either was recorded count at the value that behaves as that run did
    lc, pc = config_as_now(dict(live_manifest)), config_as_now(dict(probe_manifest))
    for key in ("handover", "stage_budgets", "max_unit_tokens", "decoding"):
        if lc.get(key) != pc.get(key):
            raise InputError(f"{where}: {key} differs from the live run's ({pc.get(key)} vs {lc.get(key)})")


def replay_for(live: Sequence[Outcome], probe_dirs: Sequence[str | Path], effort: str,
               policy: StopPolicy | None, rule: StopRule | None,
               live_manifest: Mapping[str, Any] | None = None) -> dict[tuple[str, str], Outcome]:
    """Replay every live (problem, method) found in the probe tables. Without a classifier, `tandem`
    is replayed with the budget policy (what a live run without one uses). A method the table cannot
    replay is stored as a replay error; a problem in two tables is refused."""
    policy = policy or BudgetPolicy()
    rule = rule or StopRule()
    wanted: dict[str, set[str]] = {}
    for o in live:
        wanted.setdefault(o.problem_id, set()).add(replay_name(o.method, effort))
    out: dict[tuple[str, str], Outcome] = {}
    seen: dict[str, str] = {}
    for d in probe_dirs:
        man, recs = load_probe(d)
        if live_manifest is not None:
            comparable(live_manifest, man, str(d))
        p = PairParams(man["llm"]["n_params"], man["slm"]["n_params"])
        cfg = man["config"]
        for rec in recs:
            pid = rec["problem_id"]
            if pid in seen and pid in wanted:
                raise InputError(f"problem {pid} is in two probe tables: {seen[pid]} and {d}")
            seen[pid] = str(d)
            for m in wanted.get(pid, ()):
                error = rec.get("error")
                if error is None:
                    try:
                        out[pid, m] = replay_method(rec, m, p, handover=cfg["handover"], policy=policy, rule=rule,
                                                    budgets=tuple(cfg["stage_budgets"]),
                                                    route_threshold=capabilities.route_threshold(policy),
                                                    cascade_threshold=capabilities.cascade_threshold(policy))
                        continue
                    except ConfigError as exc:
                        error = f"not replayable: {exc}"
                out[pid, m] = Outcome(pid, m, error=error, replayed=True)
    if not out:
        raise InputError("no problem of the live run is in the probe tables")
    return out


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else "0/0"


def render_agreement(rows: Sequence[MethodAgreement], checks: Sequence[PairCheck], skipped: Mapping[str, int],
                     title: str, notes: Sequence[str] = ()) -> str:
    lines = [f"# {title}", "",
             "| method | paired | same answer | same correctness | same hand-over | same generated tokens "
             "| right live / replayed | wall s live / replayed | replayed / live FLOPs (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.method}` | {r.n} | {_pct(r.same_answer, r.n)} | {_pct(r.same_correct, r.n)} "
                     f"| {_pct(r.same_handover, r.n)} | {_pct(r.same_tokens, r.n)} "
                     f"| {r.live_correct} / {r.replayed_correct} | {r.live_wall_s:.2f} / {r.replayed_wall_s:.2f} "
                     f"| {r.flops_ratio_median:.3f} |")
    lines += ["", "Not paired: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()), ""]
    lines += [f"- {n}" for n in notes]
    diff = [c for c in checks if not c.same_answer]
    if diff:
        lines += ["", "## Different answers", "",
                  "| problem | method | live answer (right?) | replayed answer (right?) | hand-over live / replayed "
                  "| SLM tokens live / replayed |", "|---|---|---|---|---|---|"]
        for c in diff:
            lv, rp = c.live, c.replayed
            lines.append(f"| {lv.problem_id} | `{lv.method}` | {lv.answer} ({'yes' if lv.correct else 'no'}) "
                         f"| {rp.answer} ({'yes' if rp.correct else 'no'}) | {lv.handover_tokens} / "
                         f"{rp.handover_tokens} | {lv.slm_generated_tokens} / {rp.slm_generated_tokens} |")
    return "\n".join(lines) + "\n"


def summary_json(rows: Sequence[MethodAgreement], skipped: Mapping[str, int]) -> dict[str, Any]:
    return {"methods": [asdict(r) for r in rows], "not_paired": dict(skipped)}
