"""How a validated chat completion request becomes the run it asks for (`RunSpec`), or a 400 naming the
field this server or its pipeline cannot honour."""

from __future__ import annotations

from typing import Any

from ..config import ServerSettings
from ..errors import ConfigError
from ..pipeline import Tandem
from .runner import RunSpec
from .schemas import SERVED_MODELS, ChatCompletionRequest, Effort, RequestError, conversation_of


def run_spec_for(req: ChatCompletionRequest, tandem: Tandem, srv: ServerSettings, request_id: str) -> RunSpec:
    """The run `req` (a served model's request) asks for; RequestError when it cannot be run here."""
    method, fixed_effort = SERVED_MODELS[req.model]
    effort, effort_param = _effort(req, fixed_effort)
    overrides: dict[str, Any] = {}
    if method == "tandem":
        overrides.update(_tandem_overrides(req, tandem, srv, effort, effort_param))
    overrides.update(_token_limits(req, tandem, srv.max_tokens_cap))
    if req.temperature is not None:
        overrides["temperature"] = float(req.temperature)
    if req.sampling:
        overrides["sampling"] = req.sampling
    if req.seed is not None:
        overrides["seed"] = req.seed
    question, conversation = conversation_of(req.messages)
    return RunSpec(question, method, overrides, req.stream, srv.fallback, request_id,
                   handover=req.handover or tandem.config.handover, conversation=conversation)


def _effort(req: ChatCompletionRequest, fixed: Effort | None) -> tuple[Effort | None, str]:
    """The effort asked for (the model's own, else the request's; None: the configured one) and the
    field that names it in errors."""
    wanted = req.requested_effort
    param = "effort" if req.effort is not None else "reasoning_effort"
    if fixed is not None and wanted is not None and wanted != fixed:
        raise RequestError(f"{param} {wanted!r} conflicts with model {req.model!r} (effort {fixed!r}); use model "
                           "'tandem' to choose the effort", param=param, code="invalid_value")
    return fixed or wanted, param


def _tandem_overrides(req: ChatCompletionRequest, tandem: Tandem, srv: ServerSettings, effort: Effort | None,
                      effort_param: str) -> dict[str, Any]:
    """A tandem run's own options: effort, hand-over mode and stage budgets."""
    overrides: dict[str, Any] = {}
    if effort is not None:
        if effort not in tandem.rule.efforts:
            raise RequestError(f"effort {effort!r} is not configured: {sorted(tandem.rule.efforts)}",
                               param=effort_param, code="invalid_value")
        overrides["effort"] = effort
    if req.handover is not None:
        overrides["handover"] = req.handover
    try:
        tandem.check_handover(req.handover or tandem.config.handover)
    except ConfigError as exc:
        raise RequestError(str(exc), param="handover", code="invalid_value") from None
    if req.stage_budgets is not None:
        if max(req.stage_budgets) > srv.max_tokens_cap:
            raise RequestError(f"stage budgets may not exceed {srv.max_tokens_cap}", param="stage_budgets",
                               code="invalid_value")
        overrides["stage_budgets"] = tuple(sorted(set(req.stage_budgets)))
    if req.thinking_budget is not None:
        if req.thinking_budget > srv.max_tokens_cap:
            raise RequestError(f"thinking_budget may not exceed {srv.max_tokens_cap}", param="thinking_budget",
                               code="invalid_value")
        overrides["max_budget"] = req.thinking_budget
    return overrides


def _token_limits(req: ChatCompletionRequest, tandem: Tandem, cap: int) -> dict[str, Any]:
    """Both models' token limits: the request's, at most `cap`; else the configured ones, cut to `cap`."""
    max_new = req.max_new_tokens
    if max_new is not None:
        if max_new > cap:
            param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            raise RequestError(f"{param} may be at most {cap} on this server", param=param, code="invalid_value")
        return {"llm_max_tokens": max_new, "slm_max_tokens": max_new}
    dec = tandem.config.decoding
    return {key: cap for key, value in (("llm_max_tokens", dec.llm_max_tokens), ("slm_max_tokens", dec.slm_max_tokens))
            if value > cap}
