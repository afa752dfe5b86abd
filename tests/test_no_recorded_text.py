"""No committed run store holds the text of a recorded LLM output (the recordings state no licence):
a store refers to a recording by its file's sha256 and offsets and reads the text from the file."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 64
STORE_STRIDE = 32
RUN = 8
# A leak is RUN store windows in a row that are windows of a recording: a copied span of
# WINDOW + RUN * STORE_STRIDE - 1 = 319 characters or more is always found. Shorter matches happen
# between models of one family writing independently (up to 160 characters were found between the
# embedded Qwen pair's answers and QwQ's on the same GSM8K problems); a hand-over prefix of 256
# tokens is about 1,000 characters.
_P = np.array([pow(1_000_003, WINDOW - 1 - j, 2**64) for j in range(WINDOW)], dtype=np.uint64)


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def window_hashes(text: str, stride: int = 1) -> np.ndarray:
    """A hash of every `WINDOW`-character window of `text` starting at a multiple of `stride`."""
    a = _codes(text)
    if len(a) < WINDOW:
        return np.zeros(0, dtype=np.uint64)
    n = len(a) - WINDOW + 1
    h = np.zeros((n + stride - 1) // stride, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(WINDOW):
            h += a[j : j + n : stride] * _P[j]
    return h


def member(h: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `h` are in `sorted_set` (sorted, unique)."""
    if len(sorted_set) == 0:
        return np.zeros(len(h), dtype=bool)
    i = np.minimum(np.searchsorted(sorted_set, h), len(sorted_set) - 1)
    return np.asarray(sorted_set[i] == h)


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _store_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    parts = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                parts.extend(_strings(json.loads(line)))
    return "\x00".join(parts)


def recorded_hashes(traces: Path) -> np.ndarray:
    """Hashes of every window of every recorded output, less the windows that quote a question."""
    outputs, questions = [], []
    for f in sorted(traces.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            outputs.append(row["output"])
            questions.append(row.get("question", ""))
    h = np.unique(window_hashes("\x00".join(outputs)))
    return h[~member(h, np.unique(window_hashes("\x00".join(questions))))]


def leaks(store: Path, rec: np.ndarray) -> bool:
    hit = member(window_hashes(_store_text(store), STORE_STRIDE), rec).astype(np.int64)
    if len(hit) < RUN:
        return False
    runs = np.convolve(hit, np.ones(RUN, dtype=np.int64), mode="valid")
    return bool((runs == RUN).any())


def run_stores(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("records.jsonl*") if p.name in ("records.jsonl", "records.jsonl.gz"))


def test_the_scan_finds_a_copied_piece(tmp_path: Path) -> None:
    out = " ".join(f"Okay, step {i}: I need to find how many apples are left after Tom gives away three." for i in range(8))
    (tmp_path / "t.jsonl").write_text(json.dumps({"question": "q", "output": out}) + "\n")
    rec = recorded_hashes(tmp_path)
    store = tmp_path / "records.jsonl"
    store.write_text(json.dumps({"key": "a", "slm": {"text": "x" * 7 + out[3:3 + 319]}}) + "\n")
    assert leaks(store, rec)
    store.write_text(json.dumps({"key": "a", "slm": {"text": out[:250] + " and more words here " * 5}}) + "\n")
    assert not leaks(store, rec)


def test_no_committed_run_store_holds_recorded_text() -> None:
    data = Path(os.environ.get("TANDEM_DATA_DIR", ROOT.parent / "shared" / "data"))
    traces = data / "traces"
    if not traces.is_dir():
        pytest.skip(f"no recordings at {traces}")
    rec = recorded_hashes(traces)
    stores = run_stores(ROOT / "results")
    assert stores, "no committed run stores found"
    found = [str(p.relative_to(ROOT)) for p in stores if leaks(p, rec)]
    assert found == []
