"""A real vLLM server (CPU build, separate environment) on loopback, for tests and benchmarks.

- `vllm_python(build=...)`: the python of `.venv-vllm` (or `$TANDEM_VLLM_VENV`; built by
  `scripts/vllm_env.sh`), or None;
- `hf_folder(python, gguf)`: the GGUF converted into an HF folder by `scripts/gguf_to_hf.py`,
  cached by the GGUF's sha256 under `$TANDEM_VLLM_CACHE` (default `~/.cache/tandem/vllm`);
- `start_vllm(...)` / `vllm_server(...)`: `python -m vllm.entrypoints.openai.api_server` as a
  process group of its own on 127.0.0.1 and a free port, its output in a log file, ready when
  `/health` answers 200; stopped by signalling the process group (API server, engine core and
  worker processes together).

The server runs the model with one OpenMP thread and no core binding (`OMP_NUM_THREADS=1`,
`VLLM_CPU_OMP_THREADS_BIND=nobind`), 1 GiB of KV cache, offline (`HF_HUB_OFFLINE=1`, no usage
statistics), and writes its caches under `$TANDEM_VLLM_CACHE`.

Benchmarks import this module too (they put `tests/` on `sys.path`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from servers import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TANDEM_VLLM_VENV", REPO / ".venv-vllm"))  # as scripts/vllm_env.sh
STAMP = VENV / ".tandem-vllm-installed"
SMOL_PARAMS = 134_515_008  # tandem.models' registry value for SmolLM2-135M

# flags every server here gets, beside the model and the address (BRIEF: --enforce-eager starts in
# ~35 s instead of ~120 s; 2048 tokens of context is plenty for the tests)
BASE_ARGS = ("--max-model-len", "2048", "--dtype", "bfloat16", "--enforce-eager")
# what the tests rely on: request logging (aborts are logged), prefix caching with cached-token
# counts in `usage`, and top-20 log-probs
FEATURE_ARGS = ("--enable-log-requests", "--enable-prefix-caching", "--enable-prompt-tokens-details",
                "--max-logprobs", "20")


def need_vllm(condition: bool, why: str) -> None:
    """Skip a test when `condition` is false, or fail it when TANDEM_VLLM=1 and TANDEM_REQUIRE_REAL=1
    (the vLLM tests were asked for and must not pass by skipping)."""
    if condition:
        return
    import pytest

    if os.environ.get("TANDEM_VLLM") == "1" and os.environ.get("TANDEM_REQUIRE_REAL") == "1":
        pytest.fail(f"required for the vLLM tests (TANDEM_VLLM=1, TANDEM_REQUIRE_REAL=1): {why}")
    pytest.skip(why)


def cache_root() -> Path:
    return Path(os.environ.get("TANDEM_VLLM_CACHE", Path.home() / ".cache" / "tandem" / "vllm"))


def vllm_python(*, build: bool) -> Path | None:
    """The vLLM environment's python: the existing one, or (build=True) one built now by
    scripts/vllm_env.sh (~3 minutes, ~600 MB from PyPI). None when absent and not built."""
    py = VENV / "bin" / "python"
    if STAMP.is_file() and py.is_file():
        return py
    if not build:
        return None
    out = subprocess.run(["bash", str(REPO / "scripts" / "vllm_env.sh")], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, text=True, timeout=1800, env={**os.environ, "TANDEM_VLLM_VENV": str(VENV)})
    return Path(out.stdout.strip().splitlines()[-1])


def hf_folder(python: Path, gguf: Path, *, dtype: str = "bfloat16") -> Path:
    """The HF folder converted from `gguf` (cached; the first conversion of SmolLM2 takes ~25-40 s)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [str(python), str(REPO / "scripts" / "gguf_to_hf.py"), str(gguf), str(cache_root() / "hf"), "--dtype", dtype],
        capture_output=True, text=True, env=env, timeout=900,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"converting {gguf.name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def server_env() -> dict[str, str]:
    root = cache_root()
    env = dict(os.environ)
    env.update(
        VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
        VLLM_CACHE_ROOT=str(root / "cache"), TORCHINDUCTOR_CACHE_DIR=str(root / "inductor"),
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class VllmServer:
    root: str  # http://127.0.0.1:PORT
    names: tuple[str, ...]  # served model names
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float = 0.0
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # the server started a session of its own: pgid == pid
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (as if the machine lost it)."""
        self._signal_group(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=30)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace_s`."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # the engine's children too, if any outlived the parent
        if self.process.poll() is None:
            self.process.wait(timeout=30)

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def log_count(self, pattern: str) -> int:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return len(re.findall(pattern, text))

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, `name{labels}` -> value (no HELP/TYPE lines)."""
        text = httpx.get(f"{self.root}/metrics", timeout=10.0, trust_env=False).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
        return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def start_vllm(
    python: Path, model_dir: Path, names: Sequence[str], *, log_dir: Path, extra_args: Sequence[str] = FEATURE_ARGS,
    startup_timeout_s: float = 180.0,
) -> VllmServer:
    """Start a vLLM server and wait for `/health`; on failure it is killed and the error carries its log."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"vllm-{port}.log"
    args = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", *names, "--host", "127.0.0.1", "--port", str(port), *BASE_ARGS, *extra_args,
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(), start_new_session=True)
    server = VllmServer(f"http://127.0.0.1:{port}", tuple(names), proc, log_path, args=args)
    t0 = time.monotonic()
    try:
        wait_until_ready(f"{server.root}/health", alive=lambda: server.alive, log=server.log, name="vLLM",
                         timeout_s=startup_timeout_s, interval_s=0.25)
    except BaseException:
        server.kill()
        raise
    server.startup_s = time.monotonic() - t0
    return server


@contextmanager
def vllm_server(python: Path, model_dir: Path, names: Sequence[str], *, log_dir: Path,
                extra_args: Sequence[str] = FEATURE_ARGS, startup_timeout_s: float = 180.0) -> Iterator[VllmServer]:
    server = start_vllm(python, model_dir, names, log_dir=log_dir, extra_args=extra_args,
                        startup_timeout_s=startup_timeout_s)
    try:
        yield server
    finally:
        server.stop()


def warm_up(server: VllmServer, name: str | None = None) -> float:
    """One short request (the first one after start-up takes ~10 s); returns its seconds."""
    t0 = time.perf_counter()
    httpx.post(f"{server.base_url}/completions", timeout=120.0, trust_env=False,
               json={"model": name or server.names[0], "prompt": "Hello", "max_tokens": 2, "temperature": 0.0})
    return time.perf_counter() - t0


if __name__ == "__main__":  # manual use: python tests/vllm_server.py MODEL.gguf  (serves until Ctrl-C)
    py = vllm_python(build=False)
    if py is None:
        sys.exit("no vLLM environment: run scripts/vllm_env.sh")
    folder = hf_folder(py, Path(sys.argv[1]))
    with vllm_server(py, folder, ["model"], log_dir=cache_root() / "logs") as srv:
        print(f"{srv.base_url} (log: {srv.log_path}); Ctrl-C stops it", flush=True)
        try:
            while srv.alive:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
