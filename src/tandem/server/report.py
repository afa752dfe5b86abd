"""What a finished run reports besides its text: the OpenAI finish reason and usage, and the `tandem`
extension object (docs/server.md). Built once per request by `final_report`, for a completion and for
the last chunks of a stream alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .answer import AnswerText
from .schemas import CompletionUsage
from .thought import split_thought

if TYPE_CHECKING:
    from ..pipeline import Tandem
    from .runner import Outcome


@dataclass(frozen=True)
class FinalReport:
    finish_reason: Literal["stop", "length"]
    usage: CompletionUsage
    tandem: dict[str, Any]  # the `tandem` extension object


def final_report(outcome: Outcome, answer: AnswerText, tandem: Tandem, *, request_id: str, return_trace: bool,
                 compare_estimate: float | None, thought_apart: bool = False) -> FinalReport:
    """The report of a run that finished with `outcome` and whose client got `answer` (finished);
    `thought_apart`: a reasoning LLM's thought went out in its own field, not in the content."""
    return FinalReport(_finish_reason(outcome, answer.stop_hit), _usage(outcome),
                       _tandem_object(outcome, answer, tandem, request_id=request_id, return_trace=return_trace,
                                      compare_estimate=compare_estimate, thought_apart=thought_apart))


def _finish_reason(outcome: Outcome, stop_hit: str | None) -> Literal["stop", "length"]:
    if stop_hit is not None:
        return "stop"
    return "length" if outcome.result.finish_reason == "length" else "stop"


def _usage(outcome: Outcome) -> CompletionUsage:
    models = outcome.result.cost.models.values()
    prompt = sum(m.input_tokens for m in models)
    completion = sum(m.generated_tokens for m in models)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                           prompt_tokens_details={"cached_tokens": sum(m.prompt_tokens_cached for m in models)})


def _parts(outcome: Outcome, tandem: Tandem, content_len: int, thought_apart: bool) -> list[dict[str, Any]]:
    """Which model wrote which characters of the returned content ([start, end) code points). A
    reasoning LLM's thought, when sent apart from the content, is left out."""
    r = outcome.result
    offset = len(r.text) - len(split_thought(r.text)[1]) if thought_apart else 0
    pieces = outcome.deltas
    if "".join(t for _, t in pieces) != r.text:  # not expected: derive from the result instead
        pieces = [("llm", r.llm_text), ("slm", r.slm_text)] if r.handover_mode == "continue" or r.method == "llm" \
            else [("slm", r.slm_text or r.llm_text)]
    names = {"llm": tandem.llm.info.name, "slm": tandem.slm.info.name}
    parts: list[dict[str, Any]] = []
    pos = 0
    for role, text in pieces:
        start, end = max(pos - offset, 0), min(pos + len(text) - offset, content_len)
        pos += len(text)
        if end <= start:
            continue
        if parts and parts[-1]["role"] == role:
            parts[-1]["end"] = end
        else:
            parts.append({"role": role, "model": names.get(role, role), "start": start, "end": end})
    return parts


def _tandem_object(outcome: Outcome, answer: AnswerText, tandem: Tandem, *, request_id: str, return_trace: bool,
                   compare_estimate: float | None, thought_apart: bool) -> dict[str, Any]:
    r = outcome.result
    cost = r.cost.to_dict()
    obj: dict[str, Any] = {
        "request_id": request_id,
        "method": r.method,
        "effort": r.settings.get("effort"),
        "handover_mode": r.handover_mode,
        "models": {"llm": tandem.llm.info.name, "slm": tandem.slm.info.name},
        "stop_reason": r.stop_reason,
        "handover_tokens": r.handover_tokens,
        "model_finish_reason": r.finish_reason,
        "stop_sequence": answer.stop_hit,
        "parts": _parts(outcome, tandem, len(answer.text), thought_apart),
        "insights": [{"text": u.text, "kind": u.kind, "end_token": u.end_token} for u in r.insights],
        "checkpoints": [c.summary() for c in r.checkpoints],
        "answer": {"answer": r.answer.answer, "rule": r.answer.rule},
        "cost": cost,
        "flops_total": cost["flops_total"],
        "flops_generated": cost["flops_generated"],
        "cancel_latency_s": r.cancel_latency_s,
        "fallback": outcome.fallback or {"used": False},
    }
    n_llm = tandem.llm.info.n_params
    if compare_estimate and n_llm:
        obj["flops_relative_to_llm_alone"] = cost["flops_total"] / (2.0 * n_llm * compare_estimate)
    if return_trace:
        obj["trace"] = r.to_dict()
    return obj
