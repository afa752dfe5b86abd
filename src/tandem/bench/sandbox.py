"""Run untrusted Python code in a contained child process.

When running as root (as here and in CI) the child gets, before it executes any of the code:

- an unprivileged uid taken from a pool (`UID_BASE`..) that no other process uses, so that
  `RLIMIT_NPROC`, which counts per uid, limits this run alone;
- a private mount namespace in which /tmp, /var/tmp, /dev/shm and /run/lock (and any directory
  that hides the interpreter from other users, such as a 0700 /root) are covered by an empty,
  root-owned tmpfs, and the interpreter is bound back at its path;
- as working directory and HOME, a fresh tmpfs of its own, owned by that uid, capped in size
  (`max_disk_mb`) and in files (`MAX_FILES`), and mounted nosuid, nodev, noexec: everything the
  code writes lives there, in memory, and vanishes with the namespace; nothing reaches the host's
  disk (the mount point is an empty directory under the host's temporary directory);
- new network and pid namespaces through ``unshare(1)``, which then drops to the unprivileged
  uid and gid (and no supplementary groups): no network at all, not even loopback, and every
  process the code starts dies with it;
- limits on address space, CPU time, file size, processes, open files and core dumps, plus
  ``no_new_privs`` so that set-uid programs cannot give root back.

On timeout the pid namespace (or, without namespaces, the process group) is killed with SIGKILL,
and every process left with the sandbox uid is killed before the directory is removed.

Without root the code runs as the current user with the resource limits only (a warning is
logged once); with root but without namespaces it still runs under the unprivileged uid, without
network isolation (warned too). `SandboxResult.network_isolated` records which one was in effect.
In both of those modes the working directory is a plain host directory: only the per-file size
limit applies, not the total.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import math
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

from tandem.errors import TandemError

__all__ = ["SandboxError", "SandboxResult", "isolation_mode", "run_sandboxed"]

logger = logging.getLogger(__name__)

UID_BASE = 64000
"""First uid (and gid) of the sandbox pool; uids that exist in the user database are skipped."""
UID_COUNT = 64
"""Size of the pool: how many sandboxes can run at once on one machine."""
COVERED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""World-writable directories hidden behind an empty read-only (root-owned) tmpfs."""
MAX_FILES = 4096
"""Most files and directories the code can create in its working directory (tmpfs inodes)."""

Mode = Literal["namespaces", "uid_only", "none"]

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_PR_SET_NO_NEW_PRIVS = 38
_PROGRAM = "program.py"


class SandboxError(TandemError):
    """The sandbox could not be set up (as opposed to the code in it failing)."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did.

    `reason` is "passed" (exit 0), "failed" (non-zero exit), "timeout" (wall clock or CPU limit),
    "memory" (MemoryError under the address-space limit) or "killed" (ended by another signal).
    `stdout` and `stderr` keep their head and tail when longer than the output limit.
    """

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    reason: str
    seconds: float
    network_isolated: bool = False
    uid: int | None = None


@dataclass(frozen=True)
class _Setup:
    """What the child starts with: the files of its working directory, the cap on that
    directory's size, and the descriptors it inherits."""

    files: Mapping[str, str]
    disk_bytes: int
    pass_fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Plan:
    mode: Mode
    unshare: str = ""
    cover: tuple[str, ...] = ()  # directories hidden by an empty tmpfs
    expose: tuple[str, ...] = ()  # interpreter directories bound back under a covered one


_plan: _Plan | None = None
_plan_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def run_sandboxed(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_procs: int = 32,
    max_file_mb: int = 16,
    max_disk_mb: int = 32,
    max_open_files: int = 64,
    max_output_chars: int = 20_000,
    files: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> SandboxResult:
    """Run `code` with this Python interpreter (``python -I``) in the sandbox described above.

    `files` are written next to the program (name -> text) before it starts; they count towards
    `max_disk_mb`, the cap on everything in the working directory (with namespaces only; the
    written data is held in memory, on top of `memory_mb`). Raises SandboxError when the sandbox
    cannot be set up; a failure of the code itself is a result, never an exception.

    `pass_fds` are file descriptors the child inherits under the same numbers (pipe ends for
    talking to it while it runs); they stay open in this process, for the caller to close.
    """
    for name in files or {}:
        if name != os.path.basename(name) or name in ("", ".", "..", _PROGRAM):
            raise ValueError(f"bad sandbox file name {name!r}")
    plan = _get_plan()
    limits = _limits(timeout_s, memory_mb, max_procs, max_file_mb, max_open_files, plan.mode)
    setup = _Setup({**(files or {}), _PROGRAM: code}, max_disk_mb << 20, tuple(pass_fds))
    if sum(len(text.encode("utf-8")) for text in setup.files.values()) > setup.disk_bytes // 2:
        raise ValueError(f"the program and its files take more than half of max_disk_mb={max_disk_mb}")
    with _lease_uid(plan.mode) as uid:
        return _run(plan, setup, uid, limits, timeout_s, max_output_chars)


def isolation_mode() -> Mode:
    """How the sandbox isolates code on this machine: "namespaces", "uid_only" or "none"."""
    return _get_plan().mode


# --- one run -----------------------------------------------------------------------------------


def _run(
    plan: _Plan,
    setup: _Setup,
    uid: int | None,
    limits: list[tuple[int, tuple[int, int]]],
    timeout_s: float,
    max_output_chars: int,
) -> SandboxResult:
    workdir = tempfile.mkdtemp(prefix="tandem-sandbox-")
    try:
        if plan.mode != "namespaces":  # with namespaces they go to the child's own tmpfs
            for name, text in setup.files.items():
                path = os.path.join(workdir, name)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                if uid is not None:
                    os.chown(path, uid, uid)
            if uid is not None:
                os.chown(workdir, uid, uid)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            returncode, timed_out = _execute(plan, setup, uid, workdir, limits, timeout_s, out, err)
            seconds = time.perf_counter() - start
            stdout = _read_bounded(out, max_output_chars)
            stderr = _read_bounded(err, max_output_chars)
    finally:
        if uid is not None:
            _kill_uid(uid)
        shutil.rmtree(workdir, ignore_errors=True)
        if os.path.exists(workdir):
            logger.warning("could not remove sandbox directory %s", workdir)
    reason = _classify(returncode, timed_out, stderr)
    return SandboxResult(
        ok=reason == "passed",
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        reason=reason,
        seconds=seconds,
        network_isolated=plan.mode == "namespaces",
        uid=uid,
    )


def _execute(
    plan: _Plan,
    setup: _Setup,
    uid: int | None,
    workdir: str,
    limits: list[tuple[int, tuple[int, int]]],
    timeout_s: float,
    out: IO[bytes],
    err: IO[bytes],
) -> tuple[int, bool]:
    """Start the child, wait for it, kill what is left. Returns (returncode, timed_out)."""
    python = [sys.executable, "-I", "-B", _PROGRAM]
    if plan.mode == "namespaces":
        assert uid is not None
        argv = [plan.unshare, "--net", "--pid", "--kill-child", "--mount-proc",
                "--setuid", str(uid), "--setgid", str(uid), "--", *python]  # fmt: skip
        preexec = _preexec_namespaces(plan, setup, workdir, uid, limits)
    else:
        argv = python
        preexec = _preexec_plain(limits, uid)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            pass_fds=setup.pass_fds,
            preexec_fn=preexec,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"could not start the sandboxed process: {exc}") from exc
    try:
        timed_out = not _wait_unreaped(proc.pid, timeout_s)
    finally:
        if plan.mode == "namespaces":
            # killing the namespace's first process kills every process in it, and lets unshare
            # reap it and exit (killing unshare first would orphan that process as a zombie)
            for child in _children(proc.pid):
                _signal(child, signal.SIGKILL)
            _wait_unreaped(proc.pid, 2.0)
        # the group leader is not reaped yet, so its group id cannot have been reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    returncode = proc.returncode
    if plan.mode == "namespaces" and returncode == 1 and _unshare_lost_sigkill(err):
        returncode = -signal.SIGKILL
    return returncode, timed_out


def _unshare_lost_sigkill(err: IO[bytes]) -> bool:
    """unshare(1) (util-linux 2.38) cannot pass on a SIGKILL of its child: it exits 1 saying so."""
    size = os.fstat(err.fileno()).st_size
    err.seek(max(0, size - 200))
    return b"unshare: sigprocmask unblock failed" in err.read()


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` exits without reaping it (so its pid and group stay ours). False on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _classify(returncode: int, timed_out: bool, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode < 0:
        return "timeout" if -returncode == signal.SIGXCPU else "killed"
    if "MemoryError" in stderr[-2000:]:
        return "memory"
    return "failed"


def _read_bounded(f: IO[bytes], max_chars: int) -> str:
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    if size <= max_chars:
        return f.read().decode("utf-8", errors="replace")
    half = max_chars // 2
    head = f.read(half).decode("utf-8", errors="replace")
    f.seek(size - half)
    tail = f.read(half).decode("utf-8", errors="replace")
    return f"{head}\n[... {size - 2 * half} bytes omitted ...]\n{tail}"


# --- what runs in the child between fork and exec ---------------------------------------------


def _limits(
    timeout_s: float, memory_mb: int, max_procs: int, max_file_mb: int, max_open_files: int, mode: Mode
) -> list[tuple[int, tuple[int, int]]]:
    cpu = max(1, math.ceil(timeout_s))
    wanted: list[tuple[int, tuple[int, int]]] = [
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_FSIZE, (max_file_mb << 20, max_file_mb << 20)),
        (resource.RLIMIT_NOFILE, (max_open_files, max_open_files)),
        (resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
    ]
    if mode != "none":  # without a uid of its own the count would include all our processes
        wanted.append((resource.RLIMIT_NPROC, (max_procs, max_procs)))
    limits = []
    for which, (soft, hard) in wanted:
        _cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY and os.geteuid() != 0:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        limits.append((which, (soft, hard)))
    return limits


def _set_limits(limits: list[tuple[int, tuple[int, int]]]) -> None:
    for which, value in limits:
        resource.setrlimit(which, value)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _preexec_namespaces(
    plan: _Plan, setup: _Setup, workdir: str, uid: int, limits: list[tuple[int, tuple[int, int]]]
) -> Callable[[], None]:
    libc = _get_libc()
    wd = os.fsencode(workdir)
    cover = [os.fsencode(d) for d in plan.cover]
    expose = [os.fsencode(p) for p in plan.expose]
    tmpfs_flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    wd_options = b"size=%d,nr_inodes=%d,mode=0700,uid=%d,gid=%d" % (
        max(setup.disk_bytes, 1 << 16),
        MAX_FILES,
        uid,
        uid,
    )
    files = [(os.fsencode(name), text.encode("utf-8")) for name, text in setup.files.items()]

    def preexec() -> None:
        _check(libc.unshare(_CLONE_NEWNS), "unshare")
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in expose]
        for d in cover:
            _check(libc.mount(b"tmpfs", d, b"tmpfs", tmpfs_flags, b"mode=0755,size=64k"), "cover")
        for p, fd in zip(expose, fds, strict=True):
            os.makedirs(p, exist_ok=True)
            _check(libc.mount(b"/proc/self/fd/%d" % fd, p, None, _MS_BIND | _MS_REC, None), "expose")
            os.close(fd)
        os.makedirs(wd, exist_ok=True)
        _check(libc.mount(b"tmpfs", wd, b"tmpfs", tmpfs_flags, wd_options), "workdir tmpfs")
        os.chdir(wd)
        for name, data in files:
            _write_file(name, data, uid)
        _set_limits(limits)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")

    return preexec


def _write_file(name: bytes, data: bytes, uid: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, uid, uid)
    finally:
        os.close(fd)


def _preexec_plain(limits: list[tuple[int, tuple[int, int]]], uid: int | None) -> Callable[[], None]:
    libc = _get_libc()

    def preexec() -> None:
        _set_limits(limits)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        libc.unshare.argtypes = [ctypes.c_int]
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        _libc = libc
    return _libc


# --- the uid pool -----------------------------------------------------------------------------


@contextlib.contextmanager
def _lease_uid(mode: Mode) -> Iterator[int | None]:
    """Hold one free uid of the pool for the duration (a file lock, valid across processes)."""
    if mode == "none":
        yield None
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "tandem-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    for uid in range(UID_BASE, UID_BASE + UID_COUNT):
        if _uid_in_passwd(uid):
            continue
        fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            if _kill_uid(uid):  # something of this uid outlived a run (or another program uses it)
                continue
            yield uid
            return
        finally:
            os.close(fd)
    raise SandboxError(f"no free sandbox uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")


def _uid_in_passwd(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int, rounds: int = 20) -> bool:
    """SIGKILL every process whose real uid is `uid`. True if some remain (zombies, or a race)."""
    for _ in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            return False
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.01)
    left = _pids_of_uid(uid)
    if left:
        logger.warning("processes of sandbox uid %d survive: %s", uid, left)
    return bool(left)


# --- choosing how to isolate, once per process ------------------------------------------------


def _get_plan() -> _Plan:
    global _plan
    with _plan_lock:
        if _plan is None:
            _plan = _choose_plan()
        return _plan


def _choose_plan() -> _Plan:
    if not sys.platform.startswith("linux"):
        raise SandboxError("the code sandbox needs Linux")
    if os.geteuid() != 0:
        logger.warning(
            "sandbox: not running as root, so generated code runs as the current user, "
            "with resource limits only (no separate uid, no network isolation)"
        )
        return _Plan("none")
    candidates: list[_Plan] = []
    unshare = shutil.which("unshare")
    problem = "the unshare program was not found"
    if unshare is not None:
        try:
            probe = subprocess.run(
                [
                    unshare,
                    "--net",
                    "--pid",
                    "--kill-child",
                    "--mount-proc",
                    "--",
                    sys.executable,
                    "-I",
                    "-c",
                    "",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"unshare failed: {exc}"
        else:
            if probe.returncode == 0:
                candidates.append(_namespace_plan(unshare))
            else:
                problem = f"unshare failed: {probe.stderr.strip()[-300:]}"
    candidates.append(_Plan("uid_only"))
    for plan in candidates:
        error = _trial(plan)
        if error is None:
            if plan.mode != "namespaces":
                logger.warning(
                    "sandbox: no network isolation for generated code (%s); it runs under an "
                    "unprivileged uid with resource limits",
                    problem,
                )
            return plan
        problem = f"{plan.mode} sandbox failed: {error}"
        logger.debug("sandbox: %s", problem)
    raise SandboxError(f"cannot run code under an unprivileged uid here: {problem}")


def _namespace_plan(unshare: str) -> _Plan:
    interpreter = sorted(
        {
            os.path.realpath(sys.base_prefix),
            os.path.realpath(sys.prefix),
            os.path.dirname(os.path.realpath(sys.executable)),
        }
    )
    interpreter = [p for p in interpreter if not any(_is_under(p, q) and p != q for q in interpreter)]
    cover = [d for d in COVERED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    for p in interpreter:
        hidden = _hidden_ancestor(p)
        if hidden is not None and hidden not in cover:
            cover.append(hidden)
    expose = [p for p in interpreter if any(_is_under(p, c) for c in cover)]
    return _Plan("namespaces", unshare=unshare, cover=tuple(cover), expose=tuple(expose))


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _hidden_ancestor(path: str) -> str | None:
    """The highest directory above `path` that other users cannot enter, if any."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def _trial(plan: _Plan) -> str | None:
    """Run a tiny program under `plan`; the error, or None if it worked."""
    code = "import os, sys\nassert os.getuid() != 0\nprint('ok')\n"
    limits = _limits(30, 512, 32, 16, 64, plan.mode)
    try:
        with _lease_uid(plan.mode) as uid:
            result = _run(plan, _Setup({_PROGRAM: code}, 1 << 20), uid, limits, 30, 2000)
    except SandboxError as exc:
        return str(exc)
    if result.ok and result.stdout.strip() == "ok":
        return None
    return f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
