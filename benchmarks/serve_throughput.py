"""Throughput with several runs in flight: `tandem serve` against the pipeline driven directly and the
LLM alone, all against one CPU vLLM server (SmolLM2-135M served as two names, LLM and SLM roles).

At each concurrency C (default 1, 4, 8, 16) and in each of R rounds, three conditions run in an
order that rotates from round to round (load on the machine moves such rates by 20% here):
- `serve`: `tandem serve` (a subprocess, server.max_in_flight = the largest C) answering 8 x C
  chat requests (model `tandem-low`) from C client threads;
- `direct`: `Tandem.solve_many` in-process on the same configuration, 8 x C questions, C in flight;
- `llm`: the LLM alone through vLLM's own chat endpoint, 8 x C requests from C threads.
Prints runs/s and p50 / p99 latency per condition and C (medians over rounds), and the ratios the
targets read: serve / direct at each C, and each condition's C=8 over its own C=1.

    .venv/bin/python benchmarks/serve_throughput.py [--levels 1,4,8,16] [--rounds 2] [--json-out FILE]

Needs the vLLM environment (`scripts/vllm_env.sh`; `--build` builds it), ../shared/data and the
`server` extra.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 64


def config_text(base_url: str, port: int, max_in_flight: int) -> str:
    role = ('kind = "openai"\nbase_url = "{url}"\nmodel = "{name}"\nn_params = 134515008\nn_ctx = 2048\n'
            'timeout_s = 300\nmax_retries = 0\n')
    return ('classifier = "budget"\n\n[llm]\n' + role.format(url=base_url, name="smol-llm")
            + "\n[slm]\n" + role.format(url=base_url, name="smol-slm")
            + f"\n[pipeline]\nstage_budgets = [16, 32]\neffort_budgets = {{ low = 32 }}\nllm_max_tokens = {MAX_TOKENS}\n"
            f"slm_max_tokens = {MAX_TOKENS}\n\n[server]\nport = {port}\nmax_in_flight = {max_in_flight}\n"
            f"max_queue = {8 * max_in_flight + 8}\nmax_tokens_cap = {MAX_TOKENS}\n")


def timed(fn: Any, items: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Wall seconds for all items, and each item's latency, `concurrency` at a time."""
    lat: list[float] = []

    def one(q: str) -> None:
        t = time.perf_counter()
        fn(q)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, items))
    return time.perf_counter() - t0, lat


def main() -> None:
    ap = argparse.ArgumentParser(description="serve vs direct vs LLM alone, several runs in flight, on vLLM")
    ap.add_argument("--levels", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--build", action="store_true", help="build the vLLM environment if it is missing")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    from servers import free_port, wait_until_ready
    from tandem.bench.datasets import load_benchmark
    from tandem.config import load_settings
    from tandem.factory import build_tandem
    from tandem.models import resolve_model
    from vllm_server import hf_folder, vllm_python, vllm_server, warm_up

    questions = [p.question for p in load_benchmark("gsm8k", split="train")][: 8 * max(levels)]
    py = vllm_python(build=args.build)
    if py is None:
        sys.exit("no vLLM environment (.venv-vllm): run scripts/vllm_env.sh or pass --build")
    folder = hf_folder(py, resolve_model("smollm2-135m"))
    meta: dict[str, Any] = {
        "benchmark": "serve_throughput", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "engine": "vLLM CPU, SmolLM2-135M bf16 as smol-llm and smol-slm, one OpenMP thread",
        "pipeline": "tandem-low: budget policy, LLM hands over after 32 tokens, 64 new tokens per model",
        "levels": levels, "rounds": args.rounds, "requests_per_level": "8 x C",
    }
    results: dict[str, dict[int, list[tuple[float, float, float]]]] = {"serve": {}, "direct": {}, "llm": {}}
    with tempfile.TemporaryDirectory(prefix="serve-tp-") as tmp, \
            vllm_server(py, folder, ["smol-llm", "smol-slm"], log_dir=Path(tmp)) as srv:
        warm_up(srv, "smol-llm")
        port = free_port()
        cfg = Path(tmp) / "tandem.toml"
        cfg.write_text(config_text(srv.base_url, port, max(levels)))
        serve = subprocess.Popen([str(REPO / ".venv" / "bin" / "tandem"), "serve", "-c", str(cfg)],
                                 stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "serve.log", "wb"))
        try:
            root = f"http://127.0.0.1:{port}"
            wait_until_ready(f"{root}/health", alive=lambda: serve.poll() is None,
                             log=lambda: (Path(tmp) / "serve.log").read_text(errors="replace"), name="tandem serve",
                             timeout_s=120)
            tandem = build_tandem(load_settings(cfg))
            client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

            def via_serve(q: str) -> None:
                r = client.post(f"{root}/v1/chat/completions", json={
                    "model": "tandem-low", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": q}]})
                r.raise_for_status()

            def llm_alone(q: str) -> None:
                r = client.post(f"{srv.base_url}/chat/completions", json={
                    "model": "smol-llm", "max_tokens": MAX_TOKENS, "temperature": 0.0,
                    "messages": [{"role": "user", "content": q}]})
                r.raise_for_status()

            conditions = {"serve": lambda qs, c: timed(via_serve, qs, c),
                          "direct": lambda qs, c: timed(lambda q: tandem.solve(q, method="tandem", effort="low"), qs, c),
                          "llm": lambda qs, c: timed(llm_alone, qs, c)}
            names = list(conditions)
            for r in range(args.rounds):
                for c in levels:
                    order = names[r % 3:] + names[: r % 3]  # rotate which condition goes first
                    for name in order:
                        secs, lat = conditions[name](questions[: 8 * c], c)
                        results[name].setdefault(c, []).append(
                            (len(lat) / secs, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))))
                        print(f"round {r} C={c:2d} {name:6s} {len(lat) / secs:6.2f} runs/s", file=sys.stderr)
            client.close()
        finally:
            serve.terminate()
            serve.wait(timeout=60)
    table = {name: {c: {"runs_per_s": round(float(np.median([x[0] for x in v])), 3),
                        "p50_s": round(float(np.median([x[1] for x in v])), 3),
                        "p99_s": round(float(np.median([x[2] for x in v])), 3),
                        "rounds_runs_per_s": [round(x[0], 3) for x in v]} for c, v in per.items()}
             for name, per in results.items()}
    ratios = {"serve_over_direct": {c: round(table["serve"][c]["runs_per_s"] / table["direct"][c]["runs_per_s"], 3)
                                    for c in levels}}
    if 1 in levels and 8 in levels:
        ratios["c8_over_c1"] = {n: round(table[n][8]["runs_per_s"] / table[n][1]["runs_per_s"], 2) for n in table}
    payload = {**meta, "results": table, "ratios": ratios}
    text = json.dumps(payload, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
