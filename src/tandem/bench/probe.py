"""Probe tables: everything needed to score any hand-over rule on a problem without running a model.

Per problem: the SLM alone, the LLM's full stream (per-token log-probs, entropies and times), and
at every checkpoint (the same schedule as live runs, for the full list of stage budgets) the
features and the SLM's graded answer from that prefix. The SLM scores and solves on one cache,
as it does live. Under greedy decoding, every method that only chooses where to hand over can
then be replayed exactly (`tandem.bench.replay`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import capabilities
from ..answer import answer_complete
from ..checkpoints import (
    THINK_CLOSE,
    THINK_OPEN,
    THINK_SEP,
    CheckpointFinder,
    CheckpointMark,
    question_steps,
    shadow_mode,
    shadow_span,
)
from ..features import CheckpointInputs, compute_features
from ..pipeline import DecodingSettings
from ..prompts import DEFAULT_TEXTS, PromptSet, PromptTexts
from ..segment import InsightSegmenter
from ..trial import ask_trial
from ..types import Backend, GenerationRequest, Grade, Problem, Prompt, TokenStep
from .probe_records import Checkpoint0Record, CheckpointRecord, GradeRecord, ProbeRecord, SolveRecord

PROBE_VERSION = "probe-v1"
PROBE_VERSION_THINK = "probe-v2"
"""Tables whose LLM reasons (`ModelInfo.thinks`): a checkpoint where its thought ends, the SLM's own
answer budget, trial answers, and no recorded text in the table (offsets into the recording instead)."""


@dataclass(frozen=True)
class ProbeConfig:
    handover: str = "continue"
    stage_budgets: tuple[int, ...] = (32, 64, 128, 192, 256)
    max_unit_tokens: int = 32
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    trial_tokens: int = 0  # > 0: a trial answer of at most this many tokens at every checkpoint (math)
    prompts: PromptTexts = DEFAULT_TEXTS


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _grade_dict(g: Grade) -> GradeRecord:
    ex = g.extraction
    return {"correct": g.correct, "reason": g.reason, "answer": ex.answer if ex else None,
            "rule": ex.rule if ex else "none"}


def _common_prefix(a: list[Any], b: list[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _units(units: list[Any], replayed: bool) -> list[dict[str, Any]]:
    """Insight units as stored: a replayed recording's text is not kept, only where each unit ends."""
    if not replayed:
        return [asdict(u) for u in units]
    out, pos = [], 0
    for u in units:
        pos += len(u.text)
        out.append({"text": None, "kind": u.kind, "end_token": u.end_token, "end_char": pos})
    return out


class Prober:
    """Builds one probe record per problem with a given model pair."""

    def __init__(self, llm: Backend, slm: Backend, grader: Callable[[Problem, str], Grade],
                 config: ProbeConfig) -> None:
        self.llm, self.slm, self.grade, self.cfg = llm, slm, grader, config

    def _gen(self, backend: Backend, prompt: Prompt, max_tokens: int, stop_task: str | None = None,
             thinks: bool = False) -> tuple[list[TokenStep], list[float], Any]:
        """Generate; with `stop_at_answer` on a math task, stop where the boxed answer's line ends."""
        d = self.cfg.decoding
        # a reasoning LLM's stream is one whose thought the table hands over: an endpoint hiding it refuses
        req = GenerationRequest(prompt, max_tokens=max(1, max_tokens), temperature=d.temperature, seed=d.seed,
                                thought_handover=thinks and backend is self.llm)
        t0, steps, times, text = time.perf_counter(), [], [], ""
        with backend.stream(req) as s:
            for st in s:
                steps.append(st)
                times.append(time.perf_counter() - t0)
                text += st.text
                if d.stop_at_answer and stop_task == "math" and answer_complete(text, thinks=thinks):
                    s.close()
                    s.finish_reason = "stop"
                    break
        return steps, times, s

    def _solve(self, backend: Backend, problem: Problem, prompt: Prompt, max_tokens: int,
               prefix: str = "", keep_text: bool = True) -> tuple[SolveRecord, list[TokenStep], list[float]]:
        t0 = time.perf_counter()
        thinks = backend.info.thinks  # its template opened a thought: its text starts inside it
        steps, times, s = self._gen(backend, prompt, max_tokens, problem.task, thinks)
        text = "".join(x.text for x in steps)
        lps = [x.logprob for x in steps if x.logprob is not None]
        record: SolveRecord = {
            "lp_mean": sum(lps) / len(lps) if lps else 0.0, "lp_min": min(lps) if lps else 0.0,
            "text": text if keep_text else None, "prompt_tokens": s.usage.prompt_tokens,
            "prompt_computed": s.usage.computed_prompt_tokens, "generated": s.usage.generated_tokens,
            "seconds": time.perf_counter() - t0, "finish": s.finish_reason,
            "grade": _grade_dict(self.grade(problem, (THINK_OPEN if thinks and not prefix else "") + prefix + text)),
        }
        return record, steps, times

    def _shadow_pass(self, scored: str, prev_tokens: list[Any] | None) -> tuple[Any, list[Any] | None, int]:
        """Score `scored` on the SLM's cache; return the result, its tokens, and what a live shadow pass
        computes of it: the tokens past the previous pass's, plus the one re-read at the seam."""
        sr = self.slm.score(scored)
        toks = self._tokens(scored)
        if toks is not None and prev_tokens is not None:
            common = _common_prefix(prev_tokens, toks)
            return sr, toks, len(toks) - common + (1 if common > 0 else 0)
        return sr, toks, sr.usage.computed_prompt_tokens

    def _reset(self) -> None:
        for b in (self.llm, self.slm):
            capabilities.reset_cache(b)

    def _tokens(self, text: str) -> list[Any] | None:
        return capabilities.tokenize(self.slm, text)

    def probe(self, problem: Problem) -> ProbeRecord:
        if self.llm.info.thinks:
            return self.probe_thinking(problem)
        cfg, ps = self.cfg, PromptSet(problem.task, self.cfg.prompts)
        q = problem.question
        self._reset()
        base = self.slm.render(ps.solve(q))
        # checkpoint 0: the SLM reads the question (its features route), then solves alone, warm
        sr0 = self.slm.score(base)
        q_steps = question_steps(sr0, base, q)
        ck0: Checkpoint0Record = {"features": compute_features(CheckpointInputs(0, 0, [], [], q_steps, [])),
               "score_tokens": sr0.usage.computed_prompt_tokens, "score_seconds": sr0.usage.seconds}
        slm_alone = self._solve(self.slm, problem, ps.solve(q), cfg.decoding.slm_max_tokens)[0]
        slm_alone["prompt_tokens_cold"] = len(sr0.steps)
        # the LLM's full stream, never cut
        llm_prompt = ps.solve(q) if cfg.handover == "continue" else ps.coordinator(q)
        self._reset()
        replayed = self.llm.info.capabilities.replayed
        llm, llm_steps, llm_times = self._solve(self.llm, problem, llm_prompt, cfg.decoding.llm_max_tokens,
                                                keep_text=not replayed)
        llm_solve = None
        if cfg.handover == "hint":
            self._reset()
            llm_solve = self._solve(self.llm, problem, ps.solve(q), cfg.decoding.llm_max_tokens)[0]
        # checkpoints: the live schedule over the whole budget list
        seg = InsightSegmenter(cfg.handover)
        finder = CheckpointFinder(sorted(cfg.stage_budgets), cfg.max_unit_tokens, seg)
        marks: list[CheckpointMark] = []
        for st in llm_steps:
            mark = finder.feed(st.text)
            if mark is not None:
                marks.append(mark)
                finder.passed()
        finder.end()
        n = len(llm_steps)
        if cfg.handover == "hint" and (not marks or marks[-1].llm_tokens < n) and finder.stage <= len(cfg.stage_budgets):
            marks.append(CheckpointMark(finder.stage, n, len(finder.text), len(seg.units)))  # insights ended early
        # the SLM at each checkpoint: shadow-score the prefix, then solve from the warm cache
        self._reset()
        self.slm.score(base)
        checkpoints: list[CheckpointRecord] = []
        prev_tokens = self._tokens(base)
        for m in marks:
            stage, k, n_units, prefix = m.stage, m.llm_tokens, m.n_units, finder.text[:m.prefix_chars]
            prompt = ps.continue_from(q, prefix) if cfg.handover == "continue" else ps.with_hint(q, prefix)
            scored, start = shadow_span(self.slm.render(prompt), base, prefix, cfg.handover, cfg.prompts.hint_guide)
            sr, toks, live = self._shadow_pass(scored, prev_tokens)
            prev_tokens = toks
            streamed = llm_steps[:k] if self.llm.info.capabilities.stream_logprobs else None
            feats = compute_features(CheckpointInputs(stage, k, seg.units[:n_units], streamed, q_steps,
                                                      sr.after(start)))
            room = cfg.decoding.slm_max_tokens - (k if cfg.handover == "continue" else 0)
            slm = self._solve(self.slm, problem, prompt, room, prefix if cfg.handover == "continue" else "")[0]
            checkpoints.append({
                "stage": stage, "llm_tokens": k, "n_insights": n_units, "features": feats,
                "handover_prompt_tokens": len(toks) if toks is not None else sr.usage.prompt_tokens,
                "score_tokens_live": live, "score_seconds": sr.usage.seconds, "prefix_chars": len(prefix),
                "slm": slm,
            })
            self.slm.score(scored)  # back to the live cache state before the next checkpoint
        return {
            "version": PROBE_VERSION, "problem_id": problem.id, "gold": problem.answer, "task": problem.task,
            "ck0": ck0, "slm_alone": slm_alone,
            "llm": {**llm, "token_times": [round(t, 4) for t in llm_times],
                    "lp": [_r(s.logprob) for s in llm_steps], "ent": [_r(s.entropy) for s in llm_steps]},
            "llm_solve": llm_solve, "checkpoints": checkpoints,
            "units": _units(seg.units, replayed),
        }

    # ---- reasoning LLMs -----------------------------------------------------------------------
    def _trial(self, problem: Problem, prompt: Prompt, previous: dict[str, Any] | None) -> dict[str, Any]:
        d = self.cfg.decoding
        t = ask_trial(self.slm, prompt, max_tokens=self.cfg.trial_tokens, temperature=d.temperature, seed=d.seed,
                      previous=previous)
        t["correct"] = bool(t["answer"] and self.grade(problem, "\\boxed{" + t["answer"] + "}").correct)
        return t

    def probe_thinking(self, problem: Problem) -> ProbeRecord:
        """Probe a reasoning LLM's stream: checkpoints at the stage budgets within its thought and where
        the thought ends (closed, or cut by its token limit); the SLM gets the thought, tags removed,
        under its own chat template, and answers within its own budget. The table keeps no text of the
        LLM's: character offsets into its output instead (`llm.chars`, units' `end_char`)."""
        cfg, ps = self.cfg, PromptSet(problem.task, self.cfg.prompts)
        q, mode, shadow = problem.question, cfg.handover, shadow_mode(cfg.handover)
        self._reset()
        base = self.slm.render(ps.solve(q))
        sr0 = self.slm.score(base)
        q_steps = question_steps(sr0, base, q)
        trials = cfg.trial_tokens > 0 and problem.task == "math"
        trial0 = self._trial(problem, ps.trial(q, "", shadow), None) if trials else None
        ck0: Checkpoint0Record = {"features": compute_features(CheckpointInputs(0, 0, [], None, q_steps, [], trial0, "open")),
               "score_tokens": sr0.usage.computed_prompt_tokens, "score_seconds": sr0.usage.seconds}
        slm_alone = self._solve(self.slm, problem, ps.solve(q), cfg.decoding.slm_max_tokens)[0]
        slm_alone["prompt_tokens_cold"] = len(sr0.steps)
        # the LLM's whole stream (a recording, or a live reasoning model)
        self._reset()
        llm, llm_steps, llm_times = self._solve(self.llm, problem, ps.solve(q), cfg.decoding.llm_max_tokens,
                                                keep_text=not self.llm.info.capabilities.replayed)
        full = "".join(st.text for st in llm_steps)
        llm["grade"] = _grade_dict(self.grade(problem, THINK_OPEN + full))
        closed_at = full.find(THINK_CLOSE)
        llm["thought_closed"] = closed_at >= 0
        llm["timing"] = self.llm.info.capabilities.wall_time
        llm["chars"] = len(full)
        # checkpoints: the stage budgets inside the thought, then the thought's end
        seg = InsightSegmenter(shadow)
        finder = CheckpointFinder(sorted(cfg.stage_budgets), cfg.max_unit_tokens, seg, thinks=True,
                                  closes_at=closed_at if closed_at >= 0 else None)
        marks: list[CheckpointMark] = []
        for st in llm_steps:
            mark = finder.feed(st.text)
            if mark is not None:
                marks.append(mark)
                if mark.event == "thought_end":
                    break
                finder.passed()
        else:
            cut = finder.end()  # cut by its token limit mid-thought: the SLM concludes
            if cut is not None:
                marks.append(cut)
        # the SLM at each checkpoint: shadow pass, trial answer, then its answer from the warm cache
        self._reset()
        self.slm.score(base)
        checkpoints: list[CheckpointRecord] = []
        prev_tokens, prev_trial = self._tokens(base), trial0
        for m in marks:
            stage, k, n_chars, n_units, end = m.stage, m.llm_tokens, m.prefix_chars, m.n_units, m.thought_closed
            thought = full[:n_chars]
            scored, start = shadow_span(self.slm.render(ps.handover(q, thought, shadow)), base, thought, shadow,
                                        cfg.prompts.hint_guide)
            sr, toks, live = self._shadow_pass(scored, prev_tokens)
            prev_tokens = toks
            trial = self._trial(problem, ps.trial(q, thought, shadow), prev_trial) if trials else None
            prev_trial = trial
            state = "open" if end is None else ("closed" if end else "cut")
            feats = compute_features(CheckpointInputs(stage, k, seg.units[:n_units], None, q_steps, sr.after(start),
                                                      trial, state))
            prompt = ps.handover(q, thought, mode)
            slm = self._solve(self.slm, problem, prompt, cfg.decoding.slm_max_tokens)[0]
            answer = slm["text"] or ""
            slm["grade"] = _grade_dict(self.grade(problem, THINK_OPEN + thought + THINK_SEP + answer))
            if self.llm.info.capabilities.replayed:  # the SLM may quote the thought it read: keep no text
                slm["chars"], slm["text"] = len(answer), None
            checkpoints.append({
                "stage": stage, "llm_tokens": k, "n_insights": n_units, "features": feats,
                "event": "budget" if end is None else "thought_end", "thought_closed": end,
                "handover_prompt_tokens": len(self._tokens(self.slm.render(prompt)) or [])
                if mode == "conclude" else (len(toks) if toks is not None else sr.usage.prompt_tokens),
                "score_tokens_live": live, "score_seconds": sr.usage.seconds, "prefix_chars": n_chars,
                "slm": slm, "trial": trial,
            })
            self.slm.score(scored)  # back to the live cache state before the next checkpoint
        units = _units(seg.units, self.llm.info.capabilities.replayed)
        return {
            "version": PROBE_VERSION_THINK, "problem_id": problem.id, "gold": problem.answer, "task": problem.task,
            "ck0": {**ck0, "trial": trial0}, "slm_alone": slm_alone,
            "llm": {**llm, "token_times": [round(t, 4) for t in llm_times], "lp": None, "ent": None},
            "llm_solve": None, "checkpoints": checkpoints, "units": units,
        }
