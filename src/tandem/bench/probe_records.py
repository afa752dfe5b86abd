"""The probe table's record types: what `tandem probe` writes per problem and replay, calibration and
training read. They are the JSON lines of the run store as they are (TypedDicts: no conversion, so
every committed table loads as written), typed so that a misspelt or missing field is a type error,
and checked once where a store is read (`probe_records`).

Versions: `probe-v1` (an LLM that does not reason) and `probe-v2` (a reasoning LLM: a checkpoint
where its thought ends, trial answers, offsets instead of its text). Fields added after tables were
recorded are `NotRequired`, and readers give them the value that behaves as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Literal, TypedDict, cast

from ..errors import InputError

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired

TrialRecord = dict[str, Any]
"""A trial answer (`tandem.trial.ask_trial`, plus `correct`): answer, closed, tokens, lp_mean, lp_min,
lp_sum, prompt_computed, seconds, agree_prev."""


class GradeRecord(TypedDict):
    correct: bool
    reason: str
    answer: str | None
    rule: str


class SolveRecord(TypedDict):
    """One model writing from one prompt: the SLM alone, the LLM's stream, the SLM from a checkpoint."""

    lp_mean: float
    lp_min: float
    text: str | None  # None where the table keeps no text (a recorded LLM's, or what may quote it)
    prompt_tokens: int
    prompt_computed: int
    generated: int
    seconds: float
    finish: str | None
    grade: GradeRecord
    prompt_tokens_cold: NotRequired[int]  # the SLM alone: its prompt read without a cache
    token_times: NotRequired[list[float]]  # the LLM: seconds to each token
    lp: NotRequired[list[float | None] | None]  # the LLM: per-token log-probs (None: not streamed)
    ent: NotRequired[list[float | None] | None]  # the LLM: per-token entropies
    thought_closed: NotRequired[bool]  # a reasoning LLM: its thought closed within its token limit
    timing: NotRequired[str]  # the LLM: "none" when its wall time is unknown (a recording)
    chars: NotRequired[int]  # the length of a text not kept


class Checkpoint0Record(TypedDict):
    """Before the LLM writes: the SLM's pass over the question."""

    features: dict[str, float]
    score_tokens: int
    score_seconds: float
    trial: NotRequired[TrialRecord | None]


class CheckpointRecord(TypedDict):
    """One checkpoint of the LLM's stream and the SLM's answer from there."""

    stage: int
    llm_tokens: int
    n_insights: int
    features: dict[str, float]
    handover_prompt_tokens: int
    score_tokens_live: int  # what a live shadow pass computes here, given the previous checkpoint's
    score_seconds: float
    prefix_chars: int
    slm: SolveRecord
    event: NotRequired[Literal["budget", "thought_end"]]  # probe-v2
    thought_closed: NotRequired[bool | None]  # at a thought_end: closed (True) or cut (False)
    trial: NotRequired[TrialRecord | None]


class ProbeRecord(TypedDict):
    """One problem of a probe table. A problem that failed to probe is stored as `problem_id` and
    `error` alone (`probe_records` sets those apart)."""

    version: str
    problem_id: str
    gold: str
    task: str
    ck0: Checkpoint0Record
    slm_alone: SolveRecord
    llm: SolveRecord
    llm_solve: SolveRecord | None  # hint mode: the LLM solving alone (its insights are no solution)
    checkpoints: list[CheckpointRecord]
    units: list[dict[str, Any]]
    error: NotRequired[str]


_REQUIRED = ("problem_id", "ck0", "slm_alone", "llm", "checkpoints")


def is_thinking(rec: ProbeRecord) -> bool:
    """Whether the record's LLM reasons (its table marks where the thought ends)."""
    return str(rec.get("version", "")) >= "probe-v2"


def thought_closed(rec: ProbeRecord) -> bool:
    """Whether the LLM closed its thought within its token limit, so that its own answer is known (always,
    for an LLM that does not reason); the answer after the thought may still be cut."""
    return bool(rec["llm"].get("thought_closed", True))


def llm_answer_complete(rec: ProbeRecord) -> bool:
    """Whether the LLM alone's answer is fully known *and* whole: its thought closed and its answer was
    not cut by its token limit (a recording cut mid-answer grades the LLM alone wrong)."""
    return thought_closed(rec) and rec["llm"].get("finish") != "length"


def kept_row(rec: ProbeRecord, *, finished_only: bool = False, complete_only: bool = False) -> bool:
    """Whether a (successful) record is kept by the row selection of replay and calibration."""
    if complete_only:
        return llm_answer_complete(rec)
    return thought_closed(rec) if finished_only else True


def probe_records(rows: Iterable[dict[str, Any]], where: str) -> list[ProbeRecord]:
    """The records of a probe store, in order (a problem that failed to probe is kept as its id and
    error); a line that is neither is refused in one line, naming the store."""
    records: list[ProbeRecord] = []
    for i, row in enumerate(rows, 1):
        missing = [] if "error" in row and "problem_id" in row else [k for k in _REQUIRED if k not in row]
        if missing:
            raise InputError(f"{where}: record {i} is no probe record (it lacks {', '.join(missing)})")
        records.append(cast(ProbeRecord, row))
    return records


def error_record(problem_id: str, error: str) -> ProbeRecord:
    """A problem that failed to probe: stored as its id and the error, counted apart, never graded."""
    return cast(ProbeRecord, {"problem_id": problem_id, "error": error})
