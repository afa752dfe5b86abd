"""Build a ready `Tandem` from settings: the two backends, the stop policy and its rule."""

from __future__ import annotations

import logging
from pathlib import Path

from .backends import build_backend
from .config import TandemSettings
from .cost import Price
from .decision import HandoverContext
from .errors import ConfigError
from .pipeline import DecodingSettings, PipelineConfig, Tandem
from .policy import BudgetPolicy, StopRule
from .prompts import DEFAULT_TEXTS, load_prompt_texts
from .types import Backend, StopPolicy

log = logging.getLogger("tandem")


def pipeline_config(settings: TandemSettings) -> PipelineConfig:
    p = settings.pipeline
    texts = load_prompt_texts(p.prompts) if p.prompts else DEFAULT_TEXTS
    return PipelineConfig(
        prompts=texts,
        task=p.task, handover=p.handover, effort=p.effort, stage_budgets=tuple(p.stage_budgets),
        max_unit_tokens=p.max_unit_tokens, shadow=p.shadow,
        decoding=DecodingSettings(p.temperature, p.seed, p.llm_max_tokens, p.slm_max_tokens, p.stop_at_answer),
    )


def load_policy(name: str, llm: Backend, slm: Backend, *, handover: str = "continue") -> tuple[StopPolicy, StopRule]:
    """'budget', 'default' (the classifier shipped for this model pair, if any) or a JSON path
    (`handover`: the pipeline's hand-over mode, for what is logged about the efforts)."""
    if name == "budget":
        return BudgetPolicy(), StopRule()
    try:
        from .classifier import load_classifier, shipped_classifier_for
    except ImportError:  # classifier extra not built yet
        if name == "default":
            return BudgetPolicy(), StopRule()
        raise ConfigError(f"cannot load classifier {name!r}: classifier support is not available") from None
    if name == "default":
        path = shipped_classifier_for(llm.info, slm.info)
        if path is None:
            log.info("no classifier is shipped for %s + %s: hand-over at each effort's budget (budget policy)",
                     llm.info.name, slm.info.name)
            return BudgetPolicy(), StopRule()
        log.info("classifier: %s (shipped for %s + %s)", path.name, llm.info.name, slm.info.name)
    else:
        path = Path(name)
    clf = load_classifier(path, llm=llm.info, slm=slm.info)
    rule = clf.stop_rule()
    alone = [e for e in rule.efforts if HandoverContext(rule, e, handover, llm.info.thinks).llm_alone]
    if alone:  # where the LLM writes insights only (hint), `finish` cannot apply: every effort hands over
        log.info("classifier %s: effort(s) %s never hand over (calibration found no hand-over that pays on its "
                 "calibration table): they run as the LLM alone", path.name, ", ".join(alone))
    return clf, rule


def check_context(settings: TandemSettings, llm: Backend, slm: Backend, rule: StopRule) -> None:
    """Refuse up front token limits a model's context cannot hold at the configured effort (a recording
    has no context)."""
    p = settings.pipeline
    if not llm.info.capabilities.replayed and p.llm_max_tokens >= llm.info.n_ctx:
        raise ConfigError(f"llm_max_tokens {p.llm_max_tokens} does not fit the LLM's context ({llm.info.n_ctx} "
                          f"tokens, {llm.info.name}): lower it or raise the LLM's n_ctx")
    longest = rule.setting(p.effort).max_budget  # other efforts are still refused by the backend per request
    handed = longest + p.max_unit_tokens if p.handover != "hint" or llm.info.thinks else longest
    need = handed + p.slm_max_tokens
    if need >= slm.info.n_ctx:
        raise ConfigError(f"the SLM's context ({slm.info.n_ctx} tokens, {slm.info.name}) cannot hold a hand-over "
                          f"at the largest effort budget ({longest} LLM tokens) plus its answer ({p.slm_max_tokens} "
                          "tokens) and the prompt: raise the SLM's n_ctx or lower the budgets")


def build_tandem(settings: TandemSettings) -> Tandem:
    llm = build_backend(settings.llm, models_dir=settings.models_dir)
    try:
        slm = build_backend(settings.slm, models_dir=settings.models_dir)
    except Exception:
        llm.close()
        raise
    policy, rule = load_policy(settings.classifier, llm, slm, handover=settings.pipeline.handover)
    if settings.pipeline.effort_budgets:
        rule = rule.with_max_budgets({str(k): v for k, v in settings.pipeline.effort_budgets.items()})
    try:
        check_context(settings, llm, slm, rule)
    except ConfigError:
        llm.close()
        slm.close()
        raise
    prices = {
        role: Price(b.price_input_per_mtok, b.price_output_per_mtok)
        for role, b in (("llm", settings.llm), ("slm", settings.slm))
    }
    return Tandem(llm, slm, policy=policy, rule=rule, config=pipeline_config(settings), prices=prices)
