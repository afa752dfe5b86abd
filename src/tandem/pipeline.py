"""The tandem loop: the LLM coordinates, the stop rule decides, the SLM executes.

    checkpoint 0 ─ SLM alone enough? ─yes─> SLM solves
         │ no
    LLM streams ─ insight boundary after a stage budget ─> checkpoint k:
         SLM shadow-scores the new insight tokens (its cache grows, nothing is recomputed),
         features -> policy -> StopRule; hand over? ─yes─> cancel the LLM stream at once,
         SLM continues from its warm cache (`continue`) or solves with the insights (`hint`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import capabilities
from .answer import answer_complete, extract_answer
from .checkpoints import (  # also importable from here, where they were first defined
    THINK_OPEN,
    THINK_SEP,
    CheckpointFinder,
    CheckpointSchedule,  # noqa: F401  (re-exported)
    question_steps,
    route_without_classifier,
    shadow_mode,
    shadow_span,
    stage_budgets_for,  # noqa: F401  (re-exported)
    thought_of,
)
from .cost import CostReport, ModelCost, Price
from .decision import CheckpointEvent, HandoverContext, HandoverWalk, route_context
from .errors import ConfigError, InputError
from .features import CheckpointInputs, available_groups, compute_features
from .methods import Method
from .policy import AFTER_THOUGHT, DEFAULT_STAGE_BUDGETS, BudgetPolicy, StopRule
from .prompts import DEFAULT_TEXTS, Conversation, HandoverMode, PromptSet, PromptTexts, Task
from .result import CheckpointRecord, TandemResult
from .segment import InsightSegmenter, InsightUnit
from .trial import ask_trial
from .types import Backend, GenerationRequest, Message, Prompt, StopPolicy, TokenStep, TokenStream, Usage

EventHook = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class DecodingSettings:
    temperature: float = 0.0
    seed: int = 0
    llm_max_tokens: int = 512
    slm_max_tokens: int = 512
    stop_at_answer: bool = False  # math: a model stops at the end of the line where its boxed answer closes
    sampling: tuple[tuple[str, Any], ...] = ()  # a run's own top_p, top_k, ... (what the roles leave unset)


@dataclass(frozen=True)
class PipelineConfig:
    task: Task = "math"
    handover: HandoverMode = "continue"
    effort: str = "medium"
    stage_budgets: tuple[int, ...] = DEFAULT_STAGE_BUDGETS
    max_unit_tokens: int = 32  # no insight boundary this long after a budget: checkpoint anyway
    trial_tokens: int = 16  # longest trial answer, when the policy reads trial answers
    prompts: PromptTexts = DEFAULT_TEXTS
    max_budget: int | None = None  # this run's largest budget for its effort (a request's thinking budget)
    shadow: bool = True  # let the SLM score the insights (features + warm cache)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)


class Tandem:
    """Solve problems with an LLM and an SLM in tandem (or either alone, for baselines)."""

    def __init__(
        self,
        llm: Backend,
        slm: Backend,
        *,
        policy: StopPolicy | None = None,
        rule: StopRule | None = None,
        config: PipelineConfig | None = None,
        prices: dict[str, Price] | None = None,
    ) -> None:
        self.llm, self.slm = llm, slm
        self.policy: StopPolicy = policy or BudgetPolicy()
        self.rule = rule or StopRule()
        self.config = config or PipelineConfig()
        self.prices = prices or {}

    def solve_chat(self, messages: Sequence[Message], *, method: str = "tandem", on_event: EventHook | None = None,
                   **overrides: Any) -> TandemResult:
        """Answer the last user message of a conversation (`tandem.prompts.Conversation` says how the
        client's system messages and earlier turns, their thoughts stripped, come before it)."""
        conversation, question = Conversation.from_messages(messages)
        return self.solve(question, method=method, on_event=on_event, conversation=conversation, **overrides)

    def solve(
        self, question: str, *, method: str = "tandem", on_event: EventHook | None = None,
        conversation: Conversation | None = None, **overrides: Any
    ) -> TandemResult:
        """`method`: "tandem", "slm", "llm", "fixed:N", or the baselines "route" (decide once, before the
        LLM writes: the SLM alone or the LLM alone) and "afterthink" (a reasoning LLM thinks until it closes its thought, the SLM writes the answer),
        "cascade" / "cascade:T" (the SLM alone first, the
        LLM alone too when the SLM's mean token log-prob is below T). `overrides` replace PipelineConfig
        fields."""
        if not question or not question.strip():
            raise InputError("the question is empty")
        m = self.check_method(method)
        if m.kind == "tandem" and m.effort is not None:
            overrides = {**overrides, "effort": m.effort}
        cfg = _with_overrides(self.config, overrides)
        run = _Run(self, cfg, question, on_event or (lambda _e, _p: None), conversation or Conversation())
        t0 = time.perf_counter()
        if m.kind in ("slm", "llm"):
            result = run.alone(m.kind)
        elif m.kind == "tandem":
            rule = self.rule.with_max_budgets({cfg.effort: cfg.max_budget}) if cfg.max_budget else self.rule
            result = run.tandem(self.policy, rule)
        elif m.kind == "fixed":
            result = run.tandem(BudgetPolicy(), self.rule.with_budget(cfg.effort, m.budget or 0))
        elif m.kind == "afterthink":
            result = run.tandem(BudgetPolicy(), StopRule({cfg.effort: AFTER_THOUGHT}))
        elif m.kind == "route":
            result = run.route(self.policy, self._route_threshold())
        else:
            result = run.cascade(self._cascade_threshold(m))
        result.method = method
        result.cost.wall_seconds = time.perf_counter() - t0
        result.settings = {**config_dict(cfg), "policy": self.policy.name, "llm": self.llm.info.name,
                           "slm": self.slm.info.name, **PromptSet(cfg.task, cfg.prompts).identity()}
        return result


    def solve_many(self, questions: Sequence[str], *, method: str = "tandem", max_in_flight: int | None = None,
                   **overrides: Any) -> list[TandemResult]:
        """`solve` each question, up to `max_in_flight` at once and never more than both backends take
        (their `max_in_flight`: an embedded llama.cpp pair runs one at a time, HTTP engines batch
        concurrent calls); the results in the questions' order, or the first error raised. `solve` is
        safe to call from several threads within those limits: this is that, with a pool."""
        limits = [n for n in (capabilities.max_concurrency(self.llm, self.slm), max_in_flight) if n is not None]
        n = max(1, min([len(questions), *limits]))
        if n == 1:
            return [self.solve(q, method=method, **overrides) for q in questions]
        with ThreadPoolExecutor(n, thread_name_prefix="tandem-solve") as pool:
            return list(pool.map(lambda q: self.solve(q, method=method, **overrides), questions))

    def check_method(self, method: str) -> Method:
        """The method `method` names, refused when this pipeline cannot run it (unknown, malformed, replay
        only, or a baseline without its threshold)."""
        m = Method.parse(method)
        if m.kind == "oracle" or (m.kind == "route" and m.effort is not None):
            raise ConfigError(f"method {method!r} is scored from probe tables only (tandem replay)")
        if m.kind == "afterthink" and not self.llm.info.thinks:
            raise ConfigError(f"method 'afterthink' needs a reasoning LLM ({self.llm.info.name} does not "
                              "open a thought)")
        if m.kind == "route":
            self._route_threshold()
        elif m.kind == "cascade":
            self._cascade_threshold(m)
        return m

    def check_handover(self, handover: str) -> None:
        """Refuse a hand-over mode this pair cannot do: `continue` and `conclude` hand a non-reasoning LLM's
        raw text to the SLM's template, so they need one tokenizer and chat template (a reasoning LLM's
        thought is handed over as plain text, re-rendered for the SLM)."""
        llm, slm = self.llm.info, self.slm.info
        if handover != "hint" and not llm.thinks and (
            llm.tokenizer_id != slm.tokenizer_id or llm.chat_template_id != slm.chat_template_id
        ):
            raise ConfigError(f"{handover} hand-over needs one tokenizer and chat template: {llm.name} and "
                              f"{slm.name} differ; use --handover hint")

    def _route_threshold(self) -> float:
        """The classifier's calibrated route threshold, else its medium effort's checkpoint-0 threshold
        (as replay does)."""
        if isinstance(self.policy, BudgetPolicy):
            raise ConfigError("method 'route' needs a classifier (the budget policy never routes)")
        thr = capabilities.route_threshold(self.policy)
        return float(thr) if thr is not None else self.rule.setting("medium").threshold_at(0)

    def _cascade_threshold(self, method: Method) -> float:
        if method.threshold is not None:
            return method.threshold
        thr = capabilities.cascade_threshold(self.policy)
        if thr is None:
            raise ConfigError("method 'cascade' needs a classifier with a calibrated cascade threshold "
                              "(tandem train calibrate); or give the threshold: cascade:T")
        return float(thr)


def _with_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """Replace PipelineConfig fields; decoding fields (temperature, seed, *_max_tokens) may be given flat."""
    if not overrides:
        return cfg
    dec_fields = set(DecodingSettings.__dataclass_fields__)
    dec = {k: v for k, v in overrides.items() if k in dec_fields}
    rest = {k: v for k, v in overrides.items() if k not in dec_fields}
    unknown = set(rest) - set(PipelineConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown pipeline option(s): {', '.join(sorted(unknown))}")
    if dec:
        rest["decoding"] = replace(cfg.decoding, **dec)
    return replace(cfg, **rest)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A pipeline or probe config as manifests and results record it: the prompt wordings by their
    version only (`identity()`), and not at all when they are the defaults, so that runs recorded
    before wordings could be configured keep their identity."""
    d = asdict(cfg)
    texts = d.pop("prompts", None)
    if texts is not None and getattr(cfg, "prompts", DEFAULT_TEXTS) != DEFAULT_TEXTS:
        d["prompt_texts"] = cfg.prompts.version
    return d


class _Run:
    """State of one solve."""

    def __init__(self, t: Tandem, cfg: PipelineConfig, question: str, emit: EventHook,
                 conversation: Conversation) -> None:
        self.t, self.cfg, self.q, self.emit = t, cfg, question, emit
        self.prompts = PromptSet(cfg.task, cfg.prompts, conversation)
        self.thinks = t.llm.info.thinks
        self.cost = CostReport()
        self.llm_cost = self._model_cost("llm", t.llm)
        self.slm_cost = self._model_cost("slm", t.slm)

    def _model_cost(self, role: str, b: Backend) -> ModelCost:
        return self.cost.model(role, b.info.name, b.info.n_params, self.t.prices.get(role))

    def _answer_done(self, text: str, thinks: bool) -> bool:
        return self.cfg.decoding.stop_at_answer and self.cfg.task == "math" and answer_complete(text, thinks=thinks)

    def _drain(self, role: str, stream: TokenStream, keep: list[TokenStep] | None = None) -> tuple[str, str | None]:
        t0, parts = time.perf_counter(), []
        thinks = (self.t.llm if role == "llm" else self.t.slm).info.thinks
        with stream:
            for step in stream:
                parts.append(step.text)
                if keep is not None:
                    keep.append(step)
                self.emit(f"{role}_token", {"text": step.text})
                self.emit("answer_delta", {"text": step.text, "role": role})
                if self._answer_done("".join(parts), thinks):
                    stream.close()
                    stream.finish_reason = "stop"
                    break
        (self.llm_cost if role == "llm" else self.slm_cost).add(stream.usage)
        self.cost.add_phase(f"{role}_generate", time.perf_counter() - t0)
        return "".join(parts), stream.finish_reason

    def _request(self, prompt: Prompt, max_tokens: int, *, thought_handover: bool = False) -> GenerationRequest:
        """The run's decoding (a backend's own sampling values apply on top: `tandem.backends.sampling`);
        `thought_handover`: the stream is a reasoning LLM's whose thought this run may hand over."""
        d = self.cfg.decoding
        return GenerationRequest(prompt, max_tokens=max(1, max_tokens), temperature=d.temperature, seed=d.seed,
                                 thought_handover=thought_handover, sampling=d.sampling)

    def alone(self, role: str, keep: list[TokenStep] | None = None) -> TandemResult:
        backend = self.t.llm if role == "llm" else self.t.slm
        max_tokens = self.cfg.decoding.llm_max_tokens if role == "llm" else self.cfg.decoding.slm_max_tokens
        thinks = backend.info.thinks  # its template opened a thought: its text starts inside it
        if thinks:
            self.emit("answer_delta", {"text": THINK_OPEN, "role": role})
        text, finish = self._drain(role, backend.stream(self._request(self.prompts.solve(self.q), max_tokens)), keep)
        if thinks:
            text = THINK_OPEN + text
        return TandemResult(
            method=role, question=self.q, text=text, answer=extract_answer(text, self.cfg.task),
            stop_reason=f"{role}_alone", llm_text=text if role == "llm" else "",
            slm_text=text if role == "slm" else "", handover_mode=self.cfg.handover,
            cost=self.cost, finish_reason=finish,
        )

    # ---- baselines: route and cascade ---------------------------------------------------------
    def route(self, policy: StopPolicy, threshold: float) -> TandemResult:
        """RouteLLM's idea: the classifier once, at checkpoint 0 (the SLM's shadow pass over the question),
        then the SLM alone when the probability reaches `threshold`, else the LLM alone. A threshold
        outside (0, 1] decides without the classifier (above 1: always the LLM; 0 or below: always
        the SLM), so no scoring pass is paid for a decision the probability cannot change."""
        fixed = route_without_classifier(threshold)
        if fixed is not None:
            self.emit("route", {"threshold": threshold, "to": fixed, "scored": False})
            return self.alone(fixed)
        self._start_shadow(policy)
        rec, _ = self._checkpoint(policy, HandoverWalk(route_context(threshold), 0), 0, "", [], [], None)
        result = self.alone("slm" if rec.handover else "llm")
        result.checkpoints = [rec]
        return result

    def cascade(self, threshold: float) -> TandemResult:
        """FrugalGPT/AutoMix's idea: the SLM alone first; when its mean token log-prob is below
        `threshold`, the LLM alone as well, and the LLM's answer stands (both are paid)."""
        steps: list[TokenStep] = []
        first = self.alone("slm", keep=steps)
        lps = [s.logprob for s in steps if s.logprob is not None]
        lp_mean = sum(lps) / len(lps) if lps else 0.0
        self.emit("cascade", {"slm_lp_mean": lp_mean, "threshold": threshold, "escalate": lp_mean < threshold})
        if lp_mean >= threshold:
            return first
        result = self.alone("llm")
        result.stop_reason = "escalated"
        result.slm_text = first.text
        return result

    # ---- checkpoints -------------------------------------------------------------------------
    def _start_shadow(self, policy: StopPolicy) -> None:
        """Whether checkpoints score question + insights with the SLM (the policy reads those features
        and the SLM can score raw text), and the rendered solve prompt the scored text starts with; and
        whether they ask the SLM for trial answers (the policy reads them: math answers only). A trial
        request reads the prefix itself where no scoring pass did (on a warm cache, or an engine's prefix
        cache: a scoring request with prompt log-probs would re-read all of it on vLLM)."""
        caps = self.t.slm.info.capabilities
        self.can_shadow = self.cfg.shadow and capabilities.uses_shadow(policy) and caps.score and caps.raw_prompt
        self.base_text = self.t.slm.render(self.prompts.solve(self.q)) if self.can_shadow else ""
        self.uses_trial = self.cfg.shadow and self.cfg.task == "math" and capabilities.uses_trial(policy)
        self.prev_trial: dict[str, Any] | None = None

    def _checkpoint(self, policy: StopPolicy, walk: HandoverWalk, stage: int, llm_text: str,
                    llm_steps: list[TokenStep], units: list[InsightUnit],
                    q_steps: list[TokenStep] | None,
                    thought_end: bool | None = None) -> tuple[CheckpointRecord, list[TokenStep] | None]:
        """Shadow pass, features, decision at one checkpoint; return its record and the question's scored
        steps (taken from the first pass that has them). `thought_end`: the checkpoint is where a
        reasoning LLM's thought ended, closed (True) or cut (False)."""
        q_now, i_steps, score_s = self._shadow(llm_text)
        q_steps = q_now if q_steps is None else q_steps
        trial = self._trial(llm_text) if self.uses_trial else None
        t0 = time.perf_counter()
        streamed = llm_steps if self.t.llm.info.capabilities.stream_logprobs else None
        thought = None if not self.thinks else ("open" if thought_end is None else
                                                ("closed" if thought_end else "cut"))
        feats = compute_features(CheckpointInputs(stage, len(llm_steps), units, streamed, q_steps, i_steps,
                                                  trial, thought))
        p = policy.sufficiency(feats)
        event: CheckpointEvent = ("start" if stage == 0 else "budget") if thought_end is None else "thought_end"
        d = walk.step(stage, len(llm_steps), p, event, thought_end)
        rec = CheckpointRecord(stage, len(llm_steps), len(units), feats, p, d.threshold, d.handover, d.reason,
                               score_s, time.perf_counter() - t0)
        self.cost.add_phase("decide", rec.decide_seconds)
        self.emit("checkpoint", asdict(rec))
        return rec, q_steps

    # ---- tandem -------------------------------------------------------------------------------
    def _slm_prompt(self, llm_text: str, mode: str | None = None) -> Prompt:
        text = thought_of(llm_text) if self.thinks else llm_text
        return self.prompts.handover(self.q, text, mode or self.cfg.handover)

    def _trial(self, llm_text: str) -> dict[str, Any]:
        """The SLM's trial answer from the prefix its shadow pass just read; priced like that pass."""
        d = self.cfg.decoding
        text = thought_of(llm_text) if self.thinks else llm_text
        t = ask_trial(self.t.slm, self.prompts.trial(self.q, text, shadow_mode(self.cfg.handover)),
                      max_tokens=self.cfg.trial_tokens, temperature=d.temperature, seed=d.seed,
                      previous=self.prev_trial)
        self.prev_trial = t
        self.slm_cost.add(Usage(computed_prompt_tokens=t["prompt_computed"], generated_tokens=t["tokens"],
                                seconds=t["seconds"]), scoring=True)
        self.cost.add_phase("slm_trial", t["seconds"])
        self.emit("trial", t)
        return t

    def _shadow(self, llm_text: str) -> tuple[list[TokenStep] | None, list[TokenStep] | None, float]:
        """Score question + insights with the SLM; return (question steps, insight steps, seconds)."""
        if not self.can_shadow:
            return None, None, 0.0
        slm = self.t.slm
        mode = shadow_mode(self.cfg.handover)
        text, start = shadow_span(slm.render(self._slm_prompt(llm_text, mode)), self.base_text,
                                  thought_of(llm_text) if self.thinks else llm_text, mode,
                                  self.cfg.prompts.hint_guide)
        t0 = time.perf_counter()
        sr = slm.score(text)
        secs = time.perf_counter() - t0
        self.slm_cost.add(sr.usage, scoring=True)
        self.cost.add_phase("slm_score", secs)
        return question_steps(sr, text, self.q), sr.after(start), secs

    def tandem(self, policy: StopPolicy, rule: StopRule) -> TandemResult:
        cfg, llm, slm, thinks = self.cfg, self.t.llm, self.t.slm, self.thinks
        self.t.check_handover(cfg.handover)
        ctx = HandoverContext(rule, cfg.effort, cfg.handover, thinks)
        llm_solves = ctx.llm_solves
        if ctx.llm_alone:  # the LLM alone, without shadow passes to pay for
            result = self.alone("llm")
            result.stop_reason = "llm_finished"
            return result
        self._start_shadow(policy)
        budgets = ctx.stage_budgets(cfg.stage_budgets)
        walk = HandoverWalk(ctx, len(budgets))
        seg, checkpoints = InsightSegmenter(shadow_mode(cfg.handover)), []
        finder = CheckpointFinder(budgets, cfg.max_unit_tokens, seg, thinks=thinks)
        llm_text, q_steps = "", None
        llm_steps: list[TokenStep] = []
        # the LLM's text is final answer text as it arrives where it is kept: continue mode, or a thought
        streams_text = cfg.handover != "hint" or thinks

        def checkpoint(stage: int, thought_end: bool | None = None) -> bool:
            nonlocal q_steps
            rec, q_steps = self._checkpoint(policy, walk, stage, llm_text, llm_steps, seg.units, q_steps,
                                            thought_end)
            checkpoints.append(rec)
            return rec.handover

        handed_over = checkpoint(0)
        cancel_latency, llm_finish = None, None
        if not handed_over:
            llm_prompt = self.prompts.solve(self.q) if llm_solves else self.prompts.coordinator(self.q)
            stream = llm.stream(self._request(llm_prompt, cfg.decoding.llm_max_tokens, thought_handover=thinks))
            t_llm, full_text, committed = time.perf_counter(), "", 0
            if thinks:
                self.emit("answer_delta", {"text": THINK_OPEN, "role": "llm"})

            def commit(end: int) -> None:
                nonlocal committed
                if streams_text and end > committed:
                    self.emit("answer_delta", {"text": full_text[committed:end], "role": "llm"})
                    committed = end

            try:
                for step in stream:
                    llm_text = full_text = full_text + step.text
                    llm_steps.append(step)
                    self.emit("llm_token", {"text": step.text})
                    mark = finder.feed(step.text)
                    for unit in finder.new_units:
                        self.emit("insight", asdict(unit))
                    if mark is not None and not walk.visits(mark.event, mark.stage, mark.thought_closed):
                        finder.passed()  # after a finish: the schedule goes on as the probe's does
                        mark = None
                    if mark is None:
                        if walk.finishing:  # no hand-over will come: the LLM's tokens are the answer as they come
                            commit(len(full_text))
                            if self._answer_done(full_text, thinks):
                                stream.close()
                                stream.finish_reason = "stop"
                                break
                        continue
                    # hand over whole units (the token that revealed a boundary waits), or the thought
                    llm_text = full_text[:mark.prefix_chars]
                    commit(mark.prefix_chars)  # what is handed over is final answer text
                    if checkpoint(mark.stage, mark.thought_closed):
                        t_dec = time.perf_counter()
                        stream.close()
                        cancel_latency, handed_over = time.perf_counter() - t_dec, True
                        break
                    if mark.event == "thought_end":  # closed, not handed over: the LLM answers
                        commit(len(full_text))
                    else:
                        finder.passed()
            finally:
                stream.close()
                self.llm_cost.add(stream.usage)
                self.cost.add_phase("llm_stream", time.perf_counter() - t_llm)
            llm_finish = stream.finish_reason
            cut = finder.end()
            if not handed_over and cut is not None:
                # the token limit cut the thought: the LLM cannot answer, the SLM concludes from it
                llm_text = full_text
                commit(len(full_text))
                handed_over = checkpoint(cut.stage, thought_end=False)
            if not handed_over:
                llm_text = full_text
                commit(len(full_text))
                handed_over = walk.end(len(llm_steps)).handover  # where the LLM wrote insights only
            if not handed_over:
                # the LLM finished its own solution before any hand-over: its answer stands
                text = THINK_OPEN + llm_text if thinks else llm_text
                return self._result(llm_text, "", "llm_finished", None, seg, checkpoints, llm_finish, None, text)
        reason = "slm_alone" if not llm_steps else walk.decisions[-1].reason
        if thinks or cfg.handover != "continue":  # the SLM's answer budget is its own
            room = cfg.decoding.slm_max_tokens
        else:  # continuing a non-reasoning LLM's answer: the combined answer is capped
            room = cfg.decoding.slm_max_tokens - len(llm_steps)
        self.emit("handover", {"llm_tokens": len(llm_steps), "reason": reason})
        # a reasoning SLM goes on inside the thought it is handed (its own `</think>` closes it)
        sep = "" if slm.info.thinks and cfg.handover != "hint" else THINK_SEP
        handed_thought = thinks and bool(llm_steps)
        # a reasoning SLM that starts a thought of its own: it solves alone, or from hint-mode insights
        own_thought = slm.info.thinks and (not llm_steps or (not thinks and cfg.handover == "hint"))
        if handed_thought and sep:
            self.emit("answer_delta", {"text": sep, "role": "llm"})
        elif own_thought:
            self.emit("answer_delta", {"text": THINK_OPEN, "role": "slm"})
        slm_text, finish = self._drain("slm", slm.stream(self._request(self._slm_prompt(llm_text), room)))
        if handed_thought:
            text = THINK_OPEN + thought_of(llm_text) + sep + slm_text
        elif own_thought:
            text = THINK_OPEN + slm_text  # the SLM's own thought, opened by its template
        elif thinks:
            text = slm_text
        elif cfg.handover != "hint":  # the LLM's text, then the SLM's (conclude's nudge is prompt only)
            text = llm_text + slm_text
        else:
            text = slm_text or llm_text
        return self._result(llm_text, slm_text, reason, len(llm_steps), seg, checkpoints, finish, cancel_latency,
                            text)

    def _result(self, llm_text: str, slm_text: str, reason: str, handover_tokens: int | None,
                seg: InsightSegmenter, checkpoints: list[CheckpointRecord], finish: str | None,
                cancel_latency: float | None, final: str) -> TandemResult:
        return TandemResult(
            method="tandem", question=self.q, text=final, answer=extract_answer(final, self.cfg.task),
            stop_reason=reason, llm_text=llm_text, slm_text=slm_text, handover_mode=self.cfg.handover,
            handover_tokens=handover_tokens, insights=list(seg.units), checkpoints=checkpoints,
            cost=self.cost, finish_reason=finish, cancel_latency_s=cancel_latency,
            features_used=available_groups(checkpoints[-1].features) if checkpoints else [],
        )
