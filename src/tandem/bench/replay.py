"""Score hand-over methods exactly from probe records, pricing them as live runs are priced.

Pricing (FLOPs = 2 x params x tokens, each token counted where it is computed):
- `slm`: the SLM reads the prompt cold and writes its answer.
- `llm`: the LLM reads the prompt and writes its whole answer.
- hand-over at checkpoint k with a feature-reading policy (`tandem`): LLM prompt + k tokens; the
  SLM's shadow pass over question and insights, incremental at every visited checkpoint; its
  continuation from the warm cache. When the effort lets the LLM finish and no checkpoint up to
  its budget was judged sufficient: the LLM's whole answer plus the shadow passes paid.
- hand-over without features (`fixed:N`, `oracle`): the SLM reads the hand-over prompt once.
- `route`: checkpoint 0 only: SLM alone or LLM alone. `cascade:T`: the SLM alone first; the LLM
  alone too when the SLM's mean token log-prob is below T.
Wall time is summed from the probe's measured parts (SLM prompt time without a shadow pass is
estimated from the SLM's measured prompt throughput at checkpoint 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import capabilities
from ..checkpoints import route_without_classifier
from ..decision import CheckpointEvent, HandoverContext, HandoverWalk, route_context
from ..errors import ConfigError
from ..features import trial_features
from ..methods import Method
from ..policy import StopRule
from ..types import StopPolicy
from .probe_records import CheckpointRecord, GradeRecord, ProbeRecord, SolveRecord, is_thinking
from .records import Outcome


@dataclass(frozen=True)
class PairParams:
    llm: int
    slm: int


@dataclass
class _Cost:
    llm_prompt: int = 0
    llm_gen: int = 0
    slm_prompt: int = 0
    slm_gen: int = 0
    seconds: float = 0.0

    def flops(self, p: PairParams) -> tuple[float, float]:
        total = 2.0 * (p.llm * (self.llm_prompt + self.llm_gen) + p.slm * (self.slm_prompt + self.slm_gen))
        return total, 2.0 * (p.llm * self.llm_gen + p.slm * self.slm_gen)


def _llm_alone(rec: ProbeRecord) -> SolveRecord:
    return rec["llm_solve"] or rec["llm"]


def _slm_prompt_seconds(rec: ProbeRecord, tokens: int) -> float:
    ck0 = rec["ck0"]
    rate = ck0["score_seconds"] / max(ck0["score_tokens"], 1)
    return tokens * rate


def _outcome(rec: ProbeRecord, method: str, grade: GradeRecord, cost: _Cost, p: PairParams, *,
             stop: str, handover: int | None, finish: str | None) -> Outcome:
    total, gen = cost.flops(p)
    unknown = rec["llm"].get("timing") == "none" and cost.llm_prompt + cost.llm_gen > 0
    return Outcome(
        problem_id=rec["problem_id"], method=method, correct=bool(grade["correct"]), answer=grade.get("answer"),
        gold=rec["gold"], extraction_rule=grade.get("rule", "none"), grade_reason=grade.get("reason", ""),
        truncated=finish == "length", stop_reason=stop, handover_tokens=handover,
        llm_prompt_tokens=cost.llm_prompt, llm_generated_tokens=cost.llm_gen, slm_prompt_tokens=cost.slm_prompt,
        slm_generated_tokens=cost.slm_gen, flops_total=total, flops_generated=gen, wall_seconds=cost.seconds,
        replayed=True, extra={"wall_unknown": True} if unknown else {},
    )


def _slm(rec: ProbeRecord, p: PairParams, method: str = "slm") -> Outcome:
    a = rec["slm_alone"]
    c = _Cost(slm_prompt=a["prompt_tokens_cold"], slm_gen=a["generated"],
              seconds=rec["ck0"]["score_seconds"] + a["seconds"])
    return _outcome(rec, method, a["grade"], c, p, stop="slm_alone", handover=None, finish=a["finish"])


def _llm(rec: ProbeRecord, p: PairParams, method: str = "llm") -> Outcome:
    a = _llm_alone(rec)
    c = _Cost(llm_prompt=a["prompt_tokens"], llm_gen=a["generated"], seconds=a["seconds"])
    return _outcome(rec, method, a["grade"], c, p, stop="llm_alone", handover=None, finish=a["finish"])


def _llm_time(rec: ProbeRecord, k: int) -> float:
    times = rec["llm"]["token_times"]
    return float(times[min(k, len(times)) - 1]) if k > 0 and times else 0.0


def _handover(rec: ProbeRecord, ck: CheckpointRecord, p: PairParams, method: str, *,
              shadow: tuple[int, float] | None, stop: str) -> Outcome:
    """Hand over at `ck`; `shadow` = the SLM tokens and seconds the shadow passes after checkpoint 0 cost
    (None: no shadow passes)."""
    k, s = ck["llm_tokens"], ck["slm"]
    c = _Cost(llm_prompt=rec["llm"]["prompt_tokens"], llm_gen=k, slm_gen=s["generated"])
    c.seconds = _llm_time(rec, k) + s["seconds"]
    if shadow is None:
        c.slm_prompt = s["prompt_tokens"]
        c.seconds += _slm_prompt_seconds(rec, s["prompt_tokens"])
    else:
        c.slm_prompt = rec["ck0"]["score_tokens"] + shadow[0] + s["prompt_computed"]
        c.seconds += rec["ck0"]["score_seconds"] + shadow[1]
    return _outcome(rec, method, s["grade"], c, p, stop=stop, handover=k, finish=s["finish"])


def _checkpoint_for_budget(rec: ProbeRecord, n: int) -> CheckpointRecord | None:
    """The live checkpoint of a fixed budget n: the first probe checkpoint at or after n tokens."""
    for ck in rec["checkpoints"]:
        if ck["llm_tokens"] >= n:
            return ck
    return None


def replay_fixed(rec: ProbeRecord, n: int, p: PairParams, handover: str = "continue") -> Outcome:
    method = f"fixed:{n}"
    if n == 0:
        return _slm(rec, p, method)
    ck = _checkpoint_for_budget(rec, n)
    if ck is None:  # the LLM finished before n tokens
        if handover == "continue":
            return _llm(rec, p, method) if not rec["llm_solve"] else _llm(rec, p, method)
        return _llm(rec, p, method)
    return _handover(rec, ck, p, method, shadow=None, stop="budget")


def options(rec: ProbeRecord, p: PairParams) -> list[Outcome]:
    """Every per-problem choice a stopping rule could make, priced without shadow passes."""
    outs = [_slm(rec, p, "slm")]
    outs += [_handover(rec, ck, p, f"ck@{ck['llm_tokens']}", shadow=None, stop="oracle") for ck in rec["checkpoints"]]
    outs.append(_llm(rec, p, "llm"))
    return outs


def ck_features(rec: ProbeRecord, ck: CheckpointRecord | None) -> dict[str, float]:
    """A checkpoint's features (`ck` None: checkpoint 0), with the trial and thought groups derived from
    the record where the table was written before they were computed with the rest."""
    src = rec["ck0"] if ck is None else ck
    feats = src["features"]
    trial = src.get("trial")
    thinks = is_thinking(rec)
    if (trial is None or "trial_has_answer" in feats) and (not thinks or "thought_end" in feats):
        return dict(feats)
    out = dict(feats)
    if trial is not None and "trial_has_answer" not in feats:
        out.update(trial_features(trial))
    if thinks and "thought_end" not in feats:
        end = ck is not None and ck.get("event") == "thought_end"
        out.update(thought_end=float(end), thought_cut=float(end and ck is not None and ck.get("thought_closed") is False))
    return out


def _with_trials(out: Outcome, rec: ProbeRecord, visited: list[CheckpointRecord], p: PairParams) -> Outcome:
    """Add what the trial answers at checkpoint 0 and the visited checkpoints cost (a policy reads them)."""
    trials = [t for t in [rec["ck0"].get("trial"), *(ck.get("trial") for ck in visited)] if t]
    prompt = sum(int(t["prompt_computed"]) for t in trials)
    gen = sum(int(t["tokens"]) for t in trials)
    out.slm_prompt_tokens += prompt
    out.slm_generated_tokens += gen
    out.flops_total += 2.0 * p.slm * (prompt + gen)
    out.flops_generated += 2.0 * p.slm * gen
    out.wall_seconds += sum(float(t["seconds"]) for t in trials)
    return out


def _thought_end(rec: ProbeRecord) -> CheckpointRecord | None:
    """A reasoning LLM's table: the checkpoint where its thought ended (closed or cut), if any."""
    for ck in rec["checkpoints"]:
        if ck.get("event") == "thought_end":
            return ck
    return None


def replay_afterthink(rec: ProbeRecord, p: PairParams) -> Outcome:
    """The LLM thinks until its thought ends; the SLM writes the answer from the whole thought."""
    ck = _thought_end(rec)
    if ck is None:
        out = _llm(rec, p, "afterthink")
        out.stop_reason = "llm_finished"
        return out
    return _handover(rec, ck, p, "afterthink", shadow=None, stop="thought_end")


def replay_oracle(rec: ProbeRecord, p: PairParams) -> Outcome:
    opts = options(rec, p)
    right = [o for o in opts if o.correct]
    best = min(right, key=lambda o: o.flops_total) if right else opts[-1]
    best.method, best.stop_reason = "oracle", "oracle"
    return best


def _event(ck: CheckpointRecord) -> tuple[CheckpointEvent, bool | None]:
    return ("thought_end", ck.get("thought_closed")) if ck.get("event") == "thought_end" else ("budget", None)


def replay_policy(rec: ProbeRecord, p: PairParams, policy: StopPolicy, rule: StopRule, *, effort: str,
                  handover: str = "continue", method: str | None = None, budgets: tuple[int, ...] | None = None,
                  ) -> Outcome:
    """The live pipeline's decisions, replayed: the same walk (`tandem.decision`) over the probe's
    checkpoints, from checkpoint 0 up to the effort's largest budget."""
    method = method or f"tandem:{effort}"
    ctx = HandoverContext(rule, effort, handover, is_thinking(rec))
    probe_budgets = tuple(budgets or (32, 64, 128, 192, 256))
    if ctx.setting.max_budget not in probe_budgets:
        raise ConfigError(f"effort {effort!r} has budget {ctx.setting.max_budget}, not a checkpoint of this probe "
                          f"table ({probe_budgets})")
    if ctx.llm_alone:  # as live: the LLM alone, no shadow passes
        out = _llm(rec, p, method)
        out.stop_reason = "llm_finished"
        return out
    walk = HandoverWalk(ctx, len(ctx.stage_budgets(probe_budgets)))
    trial = capabilities.uses_trial(policy)

    def priced(out: Outcome, visited: list[CheckpointRecord]) -> Outcome:
        return _with_trials(out, rec, visited, p) if trial else out

    if walk.step(0, 0, policy.sufficiency(ck_features(rec, None)), "start").handover:
        out = _slm(rec, p, method)
        out.slm_prompt_tokens = rec["ck0"]["score_tokens"]  # the shadow pass read the prompt
        out.stop_reason, out.extra = "slm_alone", {**out.extra, "decided_at_stage": 0}
        out.handover_tokens = 0  # as live: handed over before the LLM wrote anything
        return priced(out, [])
    visited: list[CheckpointRecord] = []
    shadow = capabilities.reads_prefix(policy)
    # a shadow pass reads what the SLM's cache lacks: the text since the last checkpoint visited, so one
    # after skipped checkpoints (a cut thought after a finish) pays for theirs too
    paid_tokens, paid_seconds, due_tokens, due_seconds = 0, 0.0, 0, 0.0

    def handed_over(ck: CheckpointRecord, stop: str) -> Outcome:
        out = _handover(rec, ck, p, method, shadow=(paid_tokens, paid_seconds) if shadow else None, stop=stop)
        out.extra = {**out.extra, "decided_at_stage": ck["stage"]}
        return priced(out, visited)

    for ck in rec["checkpoints"]:
        due_tokens += int(ck["score_tokens_live"])
        due_seconds += float(ck["score_seconds"])
        event, closed = _event(ck)
        if not walk.visits(event, ck["stage"], closed):
            continue
        visited.append(ck)
        paid_tokens, paid_seconds = paid_tokens + due_tokens, paid_seconds + due_seconds
        due_tokens, due_seconds = 0, 0.0
        d = walk.step(ck["stage"], ck["llm_tokens"], policy.sufficiency(ck_features(rec, ck)), event, closed)
        if d.handover:
            return handed_over(ck, d.reason)
    end = walk.end(rec["llm"]["generated"])
    if end.handover and visited and visited[-1]["llm_tokens"] >= rec["llm"]["generated"]:
        # hint mode: the LLM's insights ended at the last checkpoint, and the SLM takes them all
        return handed_over(visited[-1], end.reason)
    # the LLM finished its own solution first: its answer stands (plus the shadow passes paid)
    out = _llm(rec, p, method)
    out.stop_reason = "llm_finished"
    if not shadow:
        return priced(out, visited)
    out.slm_prompt_tokens = rec["ck0"]["score_tokens"] + paid_tokens
    out.wall_seconds += rec["ck0"]["score_seconds"] + paid_seconds
    out.flops_total += 2.0 * p.slm * out.slm_prompt_tokens
    return priced(out, visited)


def replay_route(rec: ProbeRecord, p: PairParams, policy: StopPolicy, threshold: float) -> Outcome:
    """RouteLLM's idea: decide once, before the LLM writes anything, between SLM alone and LLM alone.
    A threshold outside (0, 1] decides without scoring, as live."""
    fixed = route_without_classifier(threshold)
    if fixed is not None:
        return _slm(rec, p, "route") if fixed == "slm" else _llm(rec, p, "route")
    walk = HandoverWalk(route_context(threshold), 0)
    to_slm = walk.step(0, 0, policy.sufficiency(ck_features(rec, None)), "start").handover
    ck0 = rec["ck0"]
    shadow = capabilities.reads_prefix(policy)  # as live: nothing read from the SLM, no scoring pass
    if to_slm:
        out = _slm(rec, p, "route")
        if shadow:
            out.slm_prompt_tokens = ck0["score_tokens"]
        return out
    out = _llm(rec, p, "route")
    if not shadow:
        return out
    out.slm_prompt_tokens = ck0["score_tokens"]
    out.flops_total += 2.0 * p.slm * ck0["score_tokens"]
    out.wall_seconds += ck0["score_seconds"]
    return out


def replay_cascade(rec: ProbeRecord, p: PairParams, threshold: float) -> Outcome:
    """FrugalGPT/AutoMix's idea: SLM first; escalate to the LLM when its own confidence is low."""
    s = _slm(rec, p, "cascade")
    if rec["slm_alone"]["lp_mean"] >= threshold:
        return s
    out = _llm(rec, p, "cascade")
    out.slm_prompt_tokens, out.slm_generated_tokens = s.slm_prompt_tokens, s.slm_generated_tokens
    out.flops_total += s.flops_total
    out.flops_generated += s.flops_generated
    out.wall_seconds += s.wall_seconds
    out.stop_reason = "escalated"
    return out


def replay(rec: ProbeRecord, method: str, p: PairParams, *, handover: str = "continue",
           policy: StopPolicy | None = None, rule: StopRule | None = None,
           budgets: tuple[int, ...] | None = None) -> Outcome:
    """Replay one method by name: slm, llm, oracle, fixed:N, tandem:EFFORT, route, cascade:T."""
    if method == "slm":
        return _slm(rec, p)
    if method == "llm":
        return _llm(rec, p)
    if method == "oracle":
        return replay_oracle(rec, p)
    if method == "afterthink":
        return replay_afterthink(rec, p)
    m = Method.parse(method)
    if m.kind == "fixed":
        return replay_fixed(rec, m.budget or 0, p, handover)
    if m.kind == "cascade" and m.threshold is not None:
        return replay_cascade(rec, p, m.threshold)
    if policy is None or rule is None:
        raise ConfigError(f"method {method!r} needs a classifier")
    if m.kind == "tandem" and m.effort is not None:
        return replay_policy(rec, p, policy, rule, effort=m.effort, handover=handover,
                             budgets=budgets)
    if m.kind == "route":
        return replay_route(rec, p, policy, rule.setting(m.effort or "medium").threshold_at(0))
    raise ConfigError(f"unknown replay method {method!r}")
