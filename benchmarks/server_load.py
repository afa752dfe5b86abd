"""Load on `tandem serve` with the embedded pair, then malformed requests mixed with valid ones.

1. N valid requests (short GSM8K questions, max_tokens <= 128) at concurrency C, queue sized so
   none is rejected: throughput, p50/p99 latency, errors, peak RSS of the server.
2. M malformed requests (bad JSON, wrong types, unknown fields, unknown model, huge body,
   n > 1, tools) mixed with valid ones: every one must get its expected status; RSS before/after.

    python benchmarks/server_load.py --requests 64 --concurrency 8 --malformed 1000
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import free_port, wait_until_ready  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--malformed", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    from tandem.bench.datasets import load_benchmark

    qs = [p.question for p in load_benchmark("gsm8k", args.data_dir, "test")]
    qs = sorted(qs, key=len)[: args.requests]
    cfg = Path(tempfile.mkdtemp()) / "serve.toml"
    cfg.write_text(f"[server]\nmax_queue = {args.requests + args.concurrency}\nrequest_timeout_s = 3600\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                              "date": time.strftime("%Y-%m-%d"), "requests": args.requests,
                              "concurrency": args.concurrency, "max_tokens": args.max_tokens}
    try:
        wait_until_ready(base + "/health", alive=lambda: proc.poll() is None, log=lambda: "(output discarded)",
                         name="tandem serve", timeout_s=120.0)
        out["rss_mb_loaded"] = rss_mb(proc.pid)

        def one(q: str) -> tuple[float, int]:
            t = time.perf_counter()
            r = httpx.post(base + "/v1/chat/completions", timeout=3600, json={
                "model": "tandem", "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": q}]})
            return time.perf_counter() - t, r.status_code

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.concurrency) as ex:
            res = list(ex.map(one, qs))
        wall = time.perf_counter() - t0
        lat = np.array([r[0] for r in res])
        out["load"] = {"wall_s": wall, "requests_per_s": len(res) / wall, "p50_s": float(np.percentile(lat, 50)),
                       "p99_s": float(np.percentile(lat, 99)), "errors": sum(1 for r in res if r[1] != 200),
                       "statuses": sorted({r[1] for r in res}), "peak_rss_mb": hwm_mb(proc.pid)}
        # malformed mixed with valid
        rng = random.Random(0)
        valid = {"model": "slm", "max_tokens": 4, "messages": [{"role": "user", "content": "Say hi."}]}
        cases = [
            ("bad_json", b"{not json", 400), ("wrong_type", json.dumps({**valid, "max_tokens": "x"}).encode(), 400),
            ("unknown_field", json.dumps({**valid, "bogus": 1}).encode(), 400),
            ("unknown_model", json.dumps({**valid, "model": "gpt-9"}).encode(), 404),
            ("n_gt_1", json.dumps({**valid, "n": 2}).encode(), 400),
            ("tools", json.dumps({**valid, "tools": [{"type": "function"}]}).encode(), 400),
            ("huge_body", json.dumps({**valid, "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode(), 413),
            ("no_messages", json.dumps({"model": "slm"}).encode(), 400),
        ]
        before = rss_mb(proc.pid)
        wrong, counts = [], {}
        with httpx.Client(timeout=600) as c:
            for i in range(args.malformed):
                if i % 10 == 0:
                    name, body, want = "valid", json.dumps(valid).encode(), 200
                else:
                    name, body, want = rng.choice(cases)
                r = c.post(base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
                counts[name] = counts.get(name, 0) + 1
                ok = r.status_code == want and (want == 200 or "error" in r.json())
                if not ok:
                    wrong.append((name, r.status_code))
            alive = c.get(base + "/health").status_code
        out["malformed"] = {"sent": args.malformed, "by_case": counts, "wrong_status": len(wrong),
                            "wrong_samples": wrong[:5], "rss_mb_before": before, "rss_mb_after": rss_mb(proc.pid),
                            "health_after": alive, "server_alive": proc.poll() is None}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
