"""A backend that streams what an LLM once wrote: recorded outputs replayed token by token.

A probe table needs the LLM's stream only once. Where the LLM cannot run (a 32B reasoning model on
a CPU) or need not run again (a team's logs of its expensive model), its recorded outputs stand in
for it: the SLM still runs live from every checkpoint. The recording for a request is found by the
question (the last user message) or by the problem id.

The recording format (JSON Lines, one object a problem; docs/reasoning.md):

| field | required | meaning |
|---|---|---|
| `question` or `id` | one of them | the question text as the user message had it; the problem's id |
| `output` | yes | what the model wrote, as generated (a reasoning model's thought, then `</think>` and the answer) |
| `model`, `params_total` | no | the model's name and parameter count (for FLOPs); else the backend settings |
| `finished_thinking` | no | whether the thought closed (default: `</think>` occurs in `output`) |
| `starts_in_thought` | no | the chat template opened the thought in the prompt (default true) |
| `token_ids` | no | the output's token ids in the tokenizer named in the settings (else it is tokenized) |
| `prompt_tokens` | no | the prompt tokens the model read (else counted by the prompt rule) |
| `finish_reason` | no | `stop` or `length` (default: `length` for a thought that never closed, else `stop`) |

A recording carries no log-probs here and no timing: the LLM-stream features are absent (not zero)
and wall time is unknown unless a rate is given (`tokens_per_second`), in which case the stream
is paced at that rate.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_TOKENIZER
from ..errors import ConfigError, InputError, UnsupportedError
from ..types import (
    BackendBase,
    Capabilities,
    GenerationRequest,
    ModelInfo,
    Prompt,
    TokenStep,
    TokenStream,
    Usage,
)
from .tokenizers import Tokenizer

__all__ = ["PROMPT_RULES", "Recording", "RecordingSet", "RecordedBackend", "RecordedConfig", "check_recordings"]

THINK_CLOSE = "</think>"

# How many prompt tokens the recorded model read: its chat template around the question, each
# special marker counted as one token, the rest tokenized. (The recordings' models read the
# question as the only user message, and their template opens the thought.)
PROMPT_RULES: dict[str, tuple[tuple[str, bool], ...]] = {
    "chatml-think": (("<|im_start|>", True), ("user\n", False), ("{question}", False), ("<|im_end|>", True),
                     ("\n", False), ("<|im_start|>", True), ("assistant\n", False), ("<think>", True),
                     ("\n", False)),
    "deepseek-r1": (("<｜begin▁of▁sentence｜>", True), ("<｜User｜>", True), ("{question}", False),
                    ("<｜Assistant｜>", True), ("<think>", True), ("\n", False)),
    "question": (("{question}", False),),
}


def prompt_rule_for(model: str) -> str:
    """The prompt-counting rule of a model family, by its name."""
    low = model.lower()
    if "deepseek" in low and "r1" in low:
        return "deepseek-r1"
    if any(k in low for k in ("qwq", "qwen")):
        return "chatml-think"
    return "question"


def count_prompt_tokens(rule: str, question: str, tokenizer: Tokenizer) -> int:
    try:
        parts = PROMPT_RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown prompt rule {rule!r}: use one of {', '.join(PROMPT_RULES)}") from None
    n = 0
    for text, special in parts:
        n += 1 if special else len(tokenizer.encode(text.replace("{question}", question)))
    return n


def _norm(question: str) -> str:
    return " ".join(question.split())


@dataclass(frozen=True)
class Recording:
    """One recorded output. `line` is its 1-based line in the file."""

    output: str
    question: str = ""
    id: str = ""
    model: str = ""
    params_total: int = 0
    finished_thinking: bool = True
    starts_in_thought: bool = True
    token_ids: tuple[int, ...] | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    line: int = 0

    def thought_end(self) -> int | None:
        """Character offset of `</think>` in the output, or None when the thought never closed."""
        i = self.output.find(THINK_CLOSE)
        return None if i < 0 else i


def _parse(obj: Any, line: int, where: str) -> Recording:
    if not isinstance(obj, dict):
        raise InputError(f"{where}:{line}: a recording must be a JSON object")
    out = obj.get("output")
    if not isinstance(out, str) or not out:
        raise InputError(f"{where}:{line}: `output` must be a non-empty string")
    q, rid = obj.get("question", ""), obj.get("id", "")
    if not isinstance(q, str) or not isinstance(rid, (str, int)) or not (q.strip() or str(rid).strip()):
        raise InputError(f"{where}:{line}: give `question` (a string) or `id`")
    params = obj.get("params_total", 0)
    if not isinstance(params, int) or isinstance(params, bool) or params < 0:
        raise InputError(f"{where}:{line}: `params_total` must be a non-negative integer")
    ids = obj.get("token_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids)):
        raise InputError(f"{where}:{line}: `token_ids` must be a list of non-negative integers")
    pt = obj.get("prompt_tokens")
    if pt is not None and (not isinstance(pt, int) or isinstance(pt, bool) or pt < 0):
        raise InputError(f"{where}:{line}: `prompt_tokens` must be a non-negative integer")
    fr = obj.get("finish_reason")
    if fr not in (None, "stop", "length"):
        raise InputError(f"{where}:{line}: `finish_reason` must be \"stop\" or \"length\"")
    finished = obj.get("finished_thinking", THINK_CLOSE in out)
    starts = obj.get("starts_in_thought", True)
    if not isinstance(finished, bool) or not isinstance(starts, bool):
        raise InputError(f"{where}:{line}: `finished_thinking` and `starts_in_thought` must be true or false")
    if finished != (THINK_CLOSE in out) and starts:
        raise InputError(f"{where}:{line}: `finished_thinking` is {str(finished).lower()} but `</think>` "
                         f"{'does not occur' if finished else 'occurs'} in `output`")
    model = obj.get("model", "")
    return Recording(output=out, question=q, id=str(rid), model=model if isinstance(model, str) else "",
                     params_total=params, finished_thinking=finished, starts_in_thought=starts,
                     token_ids=tuple(ids) if ids is not None else None, prompt_tokens=pt,
                     finish_reason=fr, line=line)


class RecordingSet:
    """The recordings of one JSONL file, indexed by question and by id; `sha256` identifies the file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory, not a recordings file")
        try:
            data = self.path.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(f"recordings file not found: {self.path}") from exc
        except OSError as exc:
            raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path} is not UTF-8 text") from exc
        self.rows: list[Recording] = []
        self._by_q: dict[str, Recording] = {}
        self._by_id: dict[str, Recording] = {}
        for i, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path}:{i}: not JSON: {exc.msg}") from exc
            rec = _parse(obj, i, str(self.path))
            for key, index, what in ((_norm(rec.question), self._by_q, "question"), (rec.id, self._by_id, "id")):
                if not key:
                    continue
                if key in index:
                    raise InputError(f"{self.path}:{i}: the same {what} as line {index[key].line}")
                index[key] = rec
            self.rows.append(rec)
        if not self.rows:
            raise InputError(f"{self.path} holds no recordings")
        models = {r.model for r in self.rows if r.model}
        params = {r.params_total for r in self.rows if r.params_total}
        if len(models) > 1 or len(params) > 1:
            raise InputError(f"{self.path}: one file holds one model's recordings (found {sorted(models)}, "
                             f"parameter counts {sorted(params)})")
        self.model = models.pop() if models else ""
        self.params_total = params.pop() if params else 0

    def find(self, question: str = "", problem_id: str = "") -> Recording | None:
        if problem_id and problem_id in self._by_id:
            return self._by_id[problem_id]
        return self._by_q.get(_norm(question)) if question else None

    def has(self, question: str = "", problem_id: str = "") -> bool:
        return self.find(question, problem_id) is not None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class RecordedConfig:
    path: str
    tokenizer: str = DEFAULT_TOKENIZER
    name: str = ""
    n_params: int = 0
    n_ctx: int = 32768
    prompt_rule: str = ""  # default: by the model's name (prompt_rule_for)
    tokens_per_second: float | None = None  # pace the stream (modelled wall time); None: no pacing
    cap_tokens: int | None = None  # a recording this long (in our tokens) was cut by the recording's limit
    extra: dict[str, Any] = field(default_factory=dict)


class RecordedBackend(BackendBase):
    """Streams recorded outputs as a live engine would: token by token, cancellable, counted."""

    max_in_flight = None  # no engine behind it: any number of streams at once

    def __init__(self, config: RecordedConfig, tokenizer: Tokenizer, recordings: RecordingSet | None = None) -> None:
        self.config = config
        self.recordings = recordings or RecordingSet(config.path)
        self.tokenizer = tokenizer
        name = config.name or self.recordings.model or self.recordings.path.stem
        n_params = config.n_params or self.recordings.params_total
        if n_params <= 0:
            raise ConfigError(f"{self.recordings.path}: no `params_total` in the recordings: give the "
                              "recorded model's parameter count (n_params), for FLOPs")
        self.prompt_rule = config.prompt_rule or prompt_rule_for(name)
        if self.prompt_rule not in PROMPT_RULES:
            raise ConfigError(f"unknown prompt rule {self.prompt_rule!r}: use one of {', '.join(PROMPT_RULES)}")
        self._info = ModelInfo(
            name=name, n_params=n_params, n_ctx=config.n_ctx, tokenizer_id=f"recorded:{tokenizer.name}",
            chat_template_id=f"recorded:{self.prompt_rule}",
            capabilities=Capabilities(stream_logprobs=False, entropy="none", score=False, raw_prompt=False,
                                      replayed=True, wall_time="modelled" if config.tokens_per_second else "none"),
            checksum=self.recordings.sha256, thinks=any(r.starts_in_thought for r in self.recordings.rows),
        )
        self._tokens: dict[int, tuple[list[int], list[str]]] = {}

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def timing(self) -> str:
        """"modelled" (paced at a given rate) or "none" (wall time unknown)."""
        return "modelled" if self.config.tokens_per_second else "none"

    def render(self, prompt: Prompt) -> str:
        raise UnsupportedError(f"{self._info.name} is a recording: it has no raw prompt")

    def score(self, text: str) -> Any:
        raise UnsupportedError(f"{self._info.name} is a recording: it cannot score text")

    def recording_for(self, prompt: Prompt) -> Recording:
        users = [m.content for m in prompt.messages if m.role == "user"]
        rec = self.recordings.find(users[-1]) if users else None
        if rec is None:
            raise InputError(f"no recording of this question in {self.recordings.path.name} "
                             f"({len(self.recordings)} recorded)")
        return rec

    def tokens(self, rec: Recording) -> tuple[list[int], list[str]]:
        """The recording's token ids and their texts (cached)."""
        got = self._tokens.get(rec.line)
        if got is None:
            ids = list(rec.token_ids) if rec.token_ids is not None else self.tokenizer.encode(rec.output)
            got = (ids, self.tokenizer.pieces(ids))
            self._tokens[rec.line] = got
        return got

    def stream(self, request: GenerationRequest) -> TokenStream:
        rec = self.recording_for(request.prompt)
        usage = Usage()
        usage.prompt_tokens = usage.computed_prompt_tokens = rec.prompt_tokens if rec.prompt_tokens is not None \
            else count_prompt_tokens(self.prompt_rule, rec.question or _last_user(request.prompt), self.tokenizer)
        return TokenStream(self._replay(rec, request, usage), usage)

    def _replay(self, rec: Recording, req: GenerationRequest, usage: Usage) -> Generator[TokenStep, None, str]:
        ids, pieces = self.tokens(rec)
        limit = min(req.max_tokens, len(ids))
        delay = 1.0 / self.config.tokens_per_second if self.config.tokens_per_second else 0.0
        t0 = time.perf_counter()
        for i in range(limit):
            if delay:
                time.sleep(max(0.0, t0 + (i + 1) * delay - time.perf_counter()))
            usage.generated_tokens = i + 1
            yield TokenStep(pieces[i], None, None, ids[i])
        if limit < len(ids):
            return "length"
        if rec.finish_reason is not None:
            return rec.finish_reason
        if self.config.cap_tokens is not None and len(ids) >= self.config.cap_tokens:
            return "length"  # it reached the limit it was recorded with: cut, even after its thought closed
        # a recording that stopped mid-thought is a model that hit its token limit
        return "length" if rec.starts_in_thought and not rec.finished_thinking else "stop"

    def close(self) -> None:
        self._tokens.clear()


def _last_user(prompt: Prompt) -> str:
    users = [m.content for m in prompt.messages if m.role == "user"]
    return users[-1] if users else ""


def check_recordings(path: str | Path, tokenizer: Tokenizer | None = None,
                     questions: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate a recordings file (raises InputError on the first bad line) and summarise it: rows,
    model, parameters, finished thoughts, token counts (with `tokenizer`), and how many rows match
    a benchmark's problems (`questions`: id -> question)."""
    rs = RecordingSet(path)
    summary: dict[str, Any] = {
        "file": str(rs.path), "sha256": rs.sha256, "rows": len(rs), "model": rs.model or None,
        "params_total": rs.params_total or None, "finished_thinking": sum(r.finished_thinking for r in rs.rows),
        "with_token_ids": sum(r.token_ids is not None for r in rs.rows),
    }
    if tokenizer is not None:
        counts = sorted(len(r.token_ids) if r.token_ids is not None else len(tokenizer.encode(r.output))
                        for r in rs.rows)
        summary["tokens_median"] = counts[len(counts) // 2]
        summary["tokens_max"] = counts[-1]
    if questions is not None:
        by_id = sum(1 for r in rs.rows if r.id in questions)
        same_q = sum(1 for r in rs.rows if r.id in questions and _norm(questions[r.id]) == _norm(r.question))
        summary["ids_in_benchmark"] = by_id
        summary["questions_equal_benchmark"] = same_q
    return summary
