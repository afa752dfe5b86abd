"""A run store: a manifest plus an append-only JSONL of finished records.

Every finished record is appended and fsynced at once, so a run killed at any point (Ctrl-C,
kill -9) resumes without recomputing, losing or duplicating anything: a torn last line is
dropped on open. A run resumed with a different manifest is refused.

One process writes a run at a time: `open` takes an exclusive `flock` on `run.lock` in the run
directory and holds it until `close` (or the process ends, however it ends), so a second writer
is refused at once instead of appending duplicates beside the first. Readers (`read_records`,
reports) take no lock: records are whole lines, appended.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, InputError

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
LOCK = "run.lock"


def git_revision(repo: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).parent, capture_output=True, text=True,
            timeout=5, check=False,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def entropy_kinds_of(manifest: dict[str, Any]) -> dict[str, str]:
    """How a run measured each model's entropies; runs recorded before this was written used
    llama.cpp, whose entropies are exact."""
    return dict(manifest.get("entropy") or {"llm": "exact", "slm": "exact"})


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest that must match to resume (not the git revision or timestamps). The
    dataset may be extended to other rows, not changed: its label without the row range must match
    ("gsm8k/test[0:50]" resumes as "gsm8k/test[50:100]", not as "math500/test[0:50]")."""
    ident = {k: v for k, v in manifest.items() if k not in _EXTENSIBLE}
    if manifest.get("kind") in ("probe", "live"):
        ident["entropy"] = entropy_kinds_of(manifest)
    if manifest.get("kind") in ("live", "probe"):  # recorded before concurrency was written: serial
        ident.setdefault("concurrency", 1)
    if "dataset" in manifest:
        ident["dataset (without rows)"] = str(manifest["dataset"]).split("[", 1)[0]
    if isinstance(ident.get("config"), dict):
        ident["config"] = config_as_now(manifest)
    return ident


def config_as_now(manifest: dict[str, Any]) -> dict[str, Any]:
    """A run's `config`, with the options added since it was recorded at the value that behaves as
    that run did (a copy)."""
    cfg = json.loads(json.dumps(manifest.get("config") or {}))
    for path, value in _LATER_OPTIONS.get(str(manifest.get("kind")), ()):
        node = cfg
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(path[-1], value)
    return cfg


# run options added after runs were recorded, with the value that behaves as those runs did
_LATER_OPTIONS: dict[str, tuple[tuple[tuple[str, ...], Any], ...]] = {
    "probe": ((("trial_tokens",), 0), (("decoding", "stop_at_answer"), False), (("decoding", "sampling"), [])),
    "live": ((("trial_tokens",), 16), (("decoding", "stop_at_answer"), False), (("decoding", "sampling"), [])),
}


# may differ on resume: a run can be extended to more problems of the same kind
_EXTENSIBLE = ("git_revision", "created", "notes", "problem_ids", "dataset")


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ, one level into nested mappings ("llm.checksum")."""
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict) and not prefix:
            out += _differences(x, y, f"{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _load_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path`; a file that is not a JSON object is refused in one line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise InputError(f"{path}: corrupt run manifest ({exc}): restore it, or use a new run directory") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: corrupt run manifest (not a JSON object): restore it, or use a new run directory")
    return data


class RunStore:
    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        self._lock: IO[bytes] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    def open(self, manifest: dict[str, Any]) -> set[str]:
        """Create or resume the run and lock it for this process until `close`; return the keys of
        the records already done."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InputError(f"run directory {self.dir} is a file, not a directory") from None
        except OSError as exc:
            raise InputError(f"cannot create run directory {self.dir}: {exc.strerror or exc}") from None
        self._acquire()
        try:
            return self._open(manifest)
        except BaseException:
            self.close()
            raise

    def _open(self, manifest: dict[str, Any]) -> set[str]:
        if self.manifest_path.exists():
            old = _load_manifest(self.manifest_path)
            a, b = _identity(old), _identity(json.loads(json.dumps(manifest)))
            if a != b:
                raise ConfigError(
                    f"{self.dir} holds a run with another manifest (differs in: {', '.join(_differences(a, b))}); "
                    "use a new run directory"
                )
            ids = list(dict.fromkeys([*old.get("problem_ids", []), *manifest.get("problem_ids", [])]))
            if ids != old.get("problem_ids", []):  # extended to more problems: record them all
                old["problem_ids"] = ids
                old.setdefault("notes", []).append(f"extended with {manifest.get('dataset')}")
                self._write_manifest(old)
        else:
            self._write_manifest(manifest)
        packed = self.dir / (RECORDS + ".gz")
        if not self.records_path.exists() and packed.exists():  # resuming a committed, packed run
            try:
                with gzip.open(packed, "rb") as fi:
                    data = fi.read()
            except (OSError, EOFError, zlib.error) as exc:
                raise InputError(f"{packed}: unreadable run records: {exc}") from None
            self.records_path.write_bytes(data)
        self._repair()
        return {r["key"] for r in self.records()}

    def close(self) -> None:
        """Release the run (the lock file stays: removing it could let two writers lock two files)."""
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _acquire(self) -> None:
        if self._lock is not None:  # this store holds it already
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: concurrent writers are not guarded
            return
        path = self.dir / LOCK
        try:
            fh = open(path, "a+b")  # noqa: SIM115 (held until close)
        except OSError as exc:
            raise InputError(f"cannot lock run directory {self.dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(32).decode("ascii", "replace").strip()
            fh.close()
            raise InputError(
                f"{self.dir} is being written by another tandem process"
                + (f" (pid {holder})" if holder.isdigit() else "")
                + ": wait for it to finish, or use another --out"
            ) from None
        fh.truncate(0)
        fh.write(f"{os.getpid()}\n".encode())
        fh.flush()
        self._lock = fh

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def _repair(self) -> None:
        """Drop a torn final line left by a kill mid-write."""
        p = self.records_path
        if not p.exists():
            return
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with p.open("r+b") as f:
                f.truncate(cut)

    def append(self, key: str, record: Mapping[str, Any]) -> None:
        line = json.dumps({"key": key, **record}, default=str) + "\n"
        with self.records_path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        yield from read_records(self.dir)

    def manifest(self) -> dict[str, Any]:
        return _load_manifest(self.manifest_path)


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a run directory (records.jsonl or records.jsonl.gz) or of such a file. Every
    record is a JSON object with a string `key`; anything else is refused as corrupt."""
    p = Path(path)
    if p.is_dir():
        plain, packed = p / RECORDS, p / (RECORDS + ".gz")
        p = plain if plain.exists() else packed
        if not p.exists():
            return
    if not p.exists():
        raise InputError(f"no run records at {path}")
    opener = gzip.open if p.suffix == ".gz" else open
    i = 0
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # torn last line
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{p}:{i}: corrupt record: {exc}") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                    what = "not a JSON object" if not isinstance(rec, dict) else "no string 'key'"
                    raise InputError(f"{p}:{i}: corrupt record ({what})")
                yield rec
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{p}:{i + 1}: unreadable run records: {exc}") from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    m = p / MANIFEST if p.is_dir() else p.parent / MANIFEST
    if not m.exists():
        raise InputError(f"no manifest at {m}")
    return _load_manifest(m)


def pack(run_dir: str | Path) -> Path:
    """Compress records.jsonl to records.jsonl.gz (for committing results); keeps the manifest.

    The output depends only on the records (no time stamp in the gzip header), so packing an
    unchanged run again leaves the committed file byte for byte as it was; it is written to a
    temporary file and renamed, so an interrupted pack never leaves a truncated archive.
    """
    d = Path(run_dir)
    src, dst = d / RECORDS, d / (RECORDS + ".gz")
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        with src.open("rb") as fi, tmp.open("wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as fo:
                fo.write(fi.read())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
