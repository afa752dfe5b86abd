"""Real OpenAI-compatible servers on loopback for tests.

`llama_cpp_server(...)` starts llama-cpp-python's server (`python -m llama_cpp.server`) on SmolLM2
as a subprocess on 127.0.0.1 and a free port, waits until `/v1/models` answers, yields a handle
with the base URL, and kills the process by its PID afterwards. The fixtures `llama_server`
(one per test module) and `fresh_llama_server` (a factory: a server of its own, e.g. to kill it)
build on it; import them into a test module to use them.

The model is SmolLM2-135M (`tandem.models.resolve_model("smollm2-135m")`, else
`~/.cache/tandem/models/smollm2-135m.gguf`). When it or the server's dependencies are missing the
tests skip, unless TANDEM_REQUIRE_REAL=1, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MODEL_ALIAS = "smollm2"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("TANDEM_REQUIRE_REAL") == "1":
        pytest.fail(f"required for this test: {why}")
    pytest.skip(why)


def smol_model_path() -> Path:
    """SmolLM2-135M's GGUF file, or skip (fail under TANDEM_REQUIRE_REAL=1)."""
    try:
        from tandem.models import resolve_model
    except ImportError:
        path = Path.home() / ".cache" / "tandem" / "models" / "smollm2-135m.gguf"
        _need(path.is_file(), f"model file not found: {path}")
        return path
    from tandem.errors import ModelError

    try:
        return resolve_model("smollm2-135m")
    except ModelError as exc:
        _need(False, str(exc))
        raise


def require_server_deps() -> None:
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    _need(not missing, f"llama-cpp-python's server needs: {', '.join(missing)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ready(url: str, *, alive: Callable[[], bool], log: Callable[[], str], name: str,
                     timeout_s: float, interval_s: float = 0.2) -> None:
    """Poll `url` until it answers 200; raise with the server's log if it exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if not alive():
                raise RuntimeError(f"{name} exited at start:\n{log()}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready in {timeout_s:g} s:\n{log()}")
            time.sleep(interval_s)


@dataclass
class Server:
    base_url: str  # the OpenAI API base, ending in /v1
    pid: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID (no clean shutdown: as if the machine lost the process)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@contextmanager
def llama_cpp_server(
    model_path: Path, *, n_ctx: int = 2048, n_threads: int = 1, startup_timeout_s: float = 120.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Run llama-cpp-python's server on loopback for the duration of the block.

    One thread by default: with as many llama.cpp threads as cores, any other busy process (a test
    running beside it) slows generation down by an order of magnitude."""
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true",
        "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads), "--verbose", "false",
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.close(log_fd)
    server = Server(f"http://127.0.0.1:{port}/v1", proc.pid, proc, Path(log_name))
    try:
        wait_until_ready(f"{server.base_url}/models", alive=lambda: server.alive, log=server.log,
                         name="llama-cpp-python's server", timeout_s=startup_timeout_s)
        yield server
    finally:
        server.kill()
        Path(log_name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[Server]:
    """One llama-cpp-python server on SmolLM2 for a test module."""
    require_server_deps()
    with llama_cpp_server(smol_model_path()) as server:
        yield server


@pytest.fixture
def fresh_llama_server() -> Iterator[Callable[[], Server]]:
    """A factory of servers of their own (for tests that kill them); all stopped afterwards."""
    require_server_deps()
    path = smol_model_path()
    with ExitStack() as stack:
        yield lambda: stack.enter_context(llama_cpp_server(path))
