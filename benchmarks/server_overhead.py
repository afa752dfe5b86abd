"""Latency the server adds over calling the pipeline directly, with instant scripted backends.

A uvicorn server runs in a subprocess on a loopback port; one client sends N sequential
non-streaming requests. The same N questions are solved by calling `Tandem.solve` directly.
Prints p50/p99 latency and requests/s for both, and the difference; and, as the floor of any HTTP
service here, the same client's round trip to `/health` (no pipeline).

    python benchmarks/server_overhead.py --requests 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import free_port, wait_until_ready  # noqa: E402

CONFIG = """
[llm]
kind = "scripted"
model = "big"
n_params = 1500000000
reply = "Step one adds three. Step two adds four. So three plus four is seven. The answer is \\\\boxed{7}."
[slm]
kind = "scripted"
model = "small"
n_params = 500000000
reply = " The answer is \\\\boxed{7}."
[pipeline]
stage_budgets = [4, 8]
effort = "low"
[server]
max_queue = 64
"""


def stats(lat: list[float], wall: float) -> dict[str, float]:
    a = np.array(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "req_per_s": len(lat) / wall}


def _http_stack() -> str:
    """Which event loop and HTTP parser uvicorn picks here (`auto`: uvloop and httptools when installed)."""
    import importlib.util
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop} + {parser}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "scripted.toml"
    cfg.write_text(CONFIG)
    # direct
    from tandem.config import load_settings
    from tandem.factory import build_tandem

    tandem = build_tandem(load_settings(cfg))
    lat = []
    t0 = time.perf_counter()
    for i in range(args.requests):
        s = time.perf_counter()
        tandem.solve(f"Question {i}: what is 3 + 4?")
        lat.append(time.perf_counter() - s)
    direct = stats(lat, time.perf_counter() - t0)
    # through the server
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base + "/health", alive=lambda: proc.poll() is None, log=lambda: "(output discarded)",
                         name="tandem serve", timeout_s=30.0, interval_s=0.1)
        with httpx.Client(timeout=30) as c:
            body = lambda i: {"model": "tandem", "messages": [{"role": "user", "content": f"Question {i}: what is 3 + 4?"}]}  # noqa: E731
            for i in range(20):  # warm-up
                c.post(base + "/v1/chat/completions", json=body(i)).raise_for_status()
            lat = []
            t0 = time.perf_counter()
            for i in range(args.requests):
                s = time.perf_counter()
                c.post(base + "/v1/chat/completions", json=body(i)).raise_for_status()
                lat.append(time.perf_counter() - s)
            served = stats(lat, time.perf_counter() - t0)
            # the floor: an HTTP round trip through the same client and server that does no work
            lat = []
            t0 = time.perf_counter()
            for _ in range(args.requests):
                s = time.perf_counter()
                c.get(base + "/health").raise_for_status()
                lat.append(time.perf_counter() - s)
            floor = stats(lat, time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"), "requests": args.requests, "direct": direct, "server": served,
        "http_floor": floor, "http_stack": _http_stack(),
        "added_p50_ms": served["p50_ms"] - direct["p50_ms"], "added_p99_ms": served["p99_ms"] - direct["p99_ms"],
    }, indent=2))


if __name__ == "__main__":
    main()
