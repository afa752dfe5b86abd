"""Soak `tandem serve` with misbehaving upstreams and clients mixed with well-behaved ones.

`tandem serve` runs as a subprocess whose LLM role is an OpenAI-compatible upstream on loopback
(`tests/servers.misbehaving_upstream`) that answers each request according to a tag in its question:

  normal    a 24-token stream, quickly            trickle   200, then an SSE comment every 0.1 s
  tokens    a token every 0.05 s, forever          endless   one line that never ends, full speed
  silent    reads the request, never answers       error     HTTP 500 quoting an internal address

and two kinds of clients misbehave themselves: `slowbody` sends its body one byte every 0.1 s, and
`gone` gives up 0.2 s after sending (while its request waits or runs). `slm` requests are served
by a scripted SLM (no upstream). The tags are drawn at random (seeded) in the given proportions.

Measured: statuses per kind, latency of the well-behaved kinds, the server's RSS (start, peak, end),
`/health` sampled every 0.25 s (how often it was not ok, and why), the time for the queue to empty
after the last request, whether every upstream connection was closed by the server, and a final
batch of well-behaved requests that must all succeed.

    python benchmarks/server_soak.py --requests 400 --concurrency 6 --request-timeout 1.0
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import (  # noqa: E402
    Conn,
    UpstreamRequest,
    answer_sse,
    endless_line,
    fixed_answer,
    free_port,
    misbehaving_upstream,
    silent,
    trickle_comments,
    trickle_tokens,
    wait_until_ready,
)

URL = "/v1/chat/completions"
MIX = {"normal": 40, "slm": 20, "trickle": 6, "tokens": 6, "endless": 6, "silent": 6, "error": 6,
       "slowbody": 5, "gone": 5}
BEHAVIOURS = {
    "normal": answer_sse([f" w{i}" for i in range(24)]),
    "trickle": trickle_comments(0.1),
    "tokens": trickle_tokens(0.05),
    "endless": endless_line(),
    "silent": silent,
    "error": fixed_answer(500, json.dumps({"error": {"message": "pg at 10.9.8.7:5432 refused login"}})),
}


def route(req: UpstreamRequest, conn: Conn) -> None:
    """/apply-template renders the messages; /completions behaves as the question's tag says."""
    body = req.json() or {}
    if req.path == "/apply-template":
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in body.get("messages", [])) + "<assistant>"
        fixed_answer(200, json.dumps({"prompt": text}))(req, conn)
        return
    if req.path != "/v1/completions":
        fixed_answer(404, '{"detail": "Not Found"}')(req, conn)
        return
    prompt = str(body.get("prompt", ""))
    tag = next((t for t in BEHAVIOURS if f"[{t}]" in prompt), "normal")
    BEHAVIOURS[tag](req, conn)


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def payload(tag: str, i: int) -> dict[str, Any]:
    model = "slm" if tag == "slm" else "llm"
    question = f"[{'normal' if tag in ('slm', 'slowbody', 'gone') else tag}] Question {i}: what is {i} + 1?"
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": question}]}


def slow_body(base: str, body: bytes) -> int:
    """Send the body one byte every 0.1 s; the status the server answers (0: none)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        sock.settimeout(0.1)
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
                head = sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return 0
            return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--request-timeout", type=float, default=1.0)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-in-flight", type=int, default=1, help="pipelines the server runs at once (the "
                    "scripted SLM then takes as many calls)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tags = rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)

    with misbehaving_upstream(route, max_life_s=600) as up:
        cfg = Path(tempfile.mkdtemp()) / "soak.toml"
        cfg.write_text(f"""classifier = "budget"
[llm]
kind = "openai"
base_url = "{up.base_url}"
model = "m"
n_params = 1500000000
timeout_s = 30          # only the request deadline and the caps stop the misbehaving kinds
max_retries = 0
[slm]
kind = "scripted"
model = "small"
reply = "So the answer is 2."
max_in_flight = {args.max_in_flight}
[pipeline]
handover = "hint"
[server]
max_in_flight = {args.max_in_flight}
max_queue = {args.max_queue}
request_timeout_s = {args.request_timeout}
body_timeout_s = 1.0
stuck_grace_s = 1.0
log_level = "error"
""")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", "--config", str(cfg), "--port",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        out: dict[str, Any] = {
            "command": "python benchmarks/server_soak.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "requests": args.requests, "concurrency": args.concurrency, "request_timeout_s": args.request_timeout,
            "max_queue": args.max_queue, "max_in_flight": args.max_in_flight, "mix": MIX,
        }
        try:
            wait_until_ready(base + "/health", alive=lambda: proc.poll() is None, log=lambda: "(output discarded)",
                             name="tandem serve", timeout_s=120.0)
            out["rss_mb_start"] = proc_status(proc.pid, "VmRSS")
            health: Counter[str] = Counter()
            peak_rss = 0.0
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak_rss
                with httpx.Client(timeout=5) as c:
                    while not stop.is_set():
                        try:
                            health[c.get(base + "/health").json()["status"]] += 1
                        except (httpx.HTTPError, ValueError, KeyError):
                            health["no answer"] += 1
                        peak_rss = max(peak_rss, proc_status(proc.pid, "VmRSS"))
                        stop.wait(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            done, done_lock = [0], threading.Lock()

            def counted(i: int, tag: str) -> tuple[str, int, float, bool]:
                res = one(i, tag)
                with done_lock:
                    done[0] += 1
                    if done[0] == min(200, len(tags)):  # RSS growth is measured from here to the end
                        out["rss_mb_at_200"] = proc_status(proc.pid, "VmRSS")
                return res

            def one(i: int, tag: str) -> tuple[str, int, float, bool]:
                """(tag, status, seconds, whether the answer quoted the upstream's internals)"""
                body = payload(tag, i)
                t = time.perf_counter()
                if tag == "slowbody":
                    status = slow_body(base, json.dumps(body).encode())
                    return tag, status, time.perf_counter() - t, False
                try:
                    r = httpx.post(base + URL, json=body, timeout=0.2 if tag == "gone" else 60)
                except httpx.TimeoutException:
                    return tag, 0, time.perf_counter() - t, False  # the client gave up (tag "gone")
                leaked = "10.9.8.7" in r.text or up.root.removeprefix("http://") in r.text
                return tag, r.status_code, time.perf_counter() - t, leaked

            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.concurrency) as ex:
                results = list(ex.map(counted, range(len(tags)), tags))
            wall = time.perf_counter() - t0
            out["rss_mb_at_last"] = proc_status(proc.pid, "VmRSS")
            out["rss_growth_200_to_last"] = round(out["rss_mb_at_last"] / out["rss_mb_at_200"] - 1, 4)
            # the queue empties: every worker came back, every slot returned
            t_end = time.perf_counter()
            with httpx.Client(timeout=5) as c:
                while c.get(base + "/health").json()["queue"]["active"] and time.perf_counter() - t_end < 30:
                    time.sleep(0.02)
                drain_s = time.perf_counter() - t_end
                final = [c.post(base + URL, json=payload("normal", 10_000 + i)).status_code for i in range(20)]
                last_health = c.get(base + "/health").json()
                metrics = c.get(base + "/metrics").text
            stop.set()
            sampler.join(timeout=5)
            time.sleep(0.5)  # let the upstream notice the last closed connections
            by_kind: dict[str, Counter[int]] = defaultdict(Counter)
            lat: dict[str, list[float]] = defaultdict(list)
            for tag, status, secs, _ in results:
                by_kind[tag][status] += 1
                lat[tag].append(secs)
            out["wall_s"] = round(wall, 1)
            out["statuses_by_kind"] = {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())}
            out["latency_s"] = {k: {"p50": round(float(np.percentile(v, 50)), 3),
                                    "p99": round(float(np.percentile(v, 99)), 3), "max": round(max(v), 3)}
                                for k, v in sorted(lat.items())}
            out["health_samples"] = dict(health)
            out["queue_empty_after_s"] = round(drain_s, 3)
            out["final_batch_statuses"] = dict(Counter(final))
            out["health_after"] = last_health
            out["rss_mb_peak"] = round(peak_rss, 1)
            out["rss_mb_hwm"] = proc_status(proc.pid, "VmHWM")
            out["rss_mb_end"] = proc_status(proc.pid, "VmRSS")
            out["cancellations"] = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                                    if line.startswith("tandem_cancellations_total{")}
            out["upstream"] = {"requests": len(up.requests), "connections_closed": len(up.finished),
                               "longest_connection_s": round(max(up.finished, default=0.0), 2),
                               "bytes_sent_max": max(up.sent, default=0)}
            out["answers_quoting_the_upstream"] = sum(1 for r in results if r[3])
            out["server_alive"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
