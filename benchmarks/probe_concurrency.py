"""`tandem probe --concurrency N` against a real engine: time, and agreement with a serial run.

A CPU vLLM server (SmolLM2-135M, served as two names: LLM and SLM roles) on loopback; the same GSM8K
train problems probed serially and with N in flight, into two run stores. Prints wall time of each,
and how often the two tables agree: whole problems, checkpoints (the SLM's text and grade there), the
LLM's stream, and the grades; and, as the noise floor, a second serial run against the first (the
engine's prefix cache then holds blocks the first run computed). vLLM batches concurrent requests,
which is not bit-identical to one request at a time, so agreement below 100% is expected and
measured here, not assumed.

    .venv/bin/python benchmarks/probe_concurrency.py [--problems 16] [--concurrency 4] [--json-out FILE]

Needs the vLLM environment (`scripts/vllm_env.sh`; `--build` builds it) and ../shared/data.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def core(rec: dict[str, Any]) -> dict[str, Any]:
    return {"llm": rec["llm"]["text"], "slm": rec["slm_alone"]["text"],
            "cks": [(c["llm_tokens"], c["slm"]["text"]) for c in rec["checkpoints"]]}


def grades(rec: dict[str, Any]) -> list[bool]:
    return [bool(rec["slm_alone"]["grade"]["correct"]), bool(rec["llm"]["grade"]["correct"]),
            *(bool(c["slm"]["grade"]["correct"]) for c in rec["checkpoints"])]


def compare(serial: dict[str, dict[str, Any]], batched: dict[str, dict[str, Any]]) -> dict[str, Any]:
    failed = sorted(i for i in set(serial) | set(batched) if "error" in serial.get(i, {}) or "error" in batched.get(i, {}))
    ids = sorted((set(serial) & set(batched)) - set(failed))
    same_problem = sum(core(serial[i]) == core(batched[i]) for i in ids)
    same_llm = sum(serial[i]["llm"]["text"] == batched[i]["llm"]["text"] for i in ids)
    cks = [(a, b) for i in ids for a, b in zip(core(serial[i])["cks"], core(batched[i])["cks"], strict=False)]
    gs = [(a, b) for i in ids for a, b in zip(grades(serial[i]), grades(batched[i]), strict=False)]
    errors = [r["error"][:200] for i in failed for r in (serial.get(i, {}), batched.get(i, {})) if "error" in r]
    return {"problems": len(ids), "problems_failed": len(failed), "errors": errors, "problems_identical": same_problem, "llm_streams_identical": same_llm,
            "checkpoints": len(cks), "checkpoints_identical": sum(a == b for a, b in cks),
            "grades": len(gs), "grades_equal": sum(a == b for a, b in gs),
            "accuracy_serial": [sum(x) for x in zip(*(grades(serial[i]) [:2] for i in ids), strict=True)],
            "accuracy_batched": [sum(x) for x in zip(*(grades(batched[i])[:2] for i in ids), strict=True)]}


def probe(base_url: str, problems: list[Any], out: Path, concurrency: int) -> tuple[float, dict[str, Any]]:
    from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
    from tandem.bench.graders import get_grader
    from tandem.bench.probe import ProbeConfig
    from tandem.bench.runner import run_probe
    from tandem.bench.store import RunStore, read_records
    from tandem.pipeline import DecodingSettings
    from vllm_server import SMOL_PARAMS

    def http(name: str) -> OpenAIBackend:
        return OpenAIBackend(OpenAIBackendConfig(base_url=base_url, model=name, n_params=SMOL_PARAMS, n_ctx=2048,
                                                 timeout_s=300.0, max_retries=0, prompt_logprobs=True))

    llm, slm = http("smol-llm"), http("smol-slm")
    cfg = ProbeConfig(stage_budgets=(32, 64, 128), decoding=DecodingSettings(llm_max_tokens=160, slm_max_tokens=160))
    t0 = time.perf_counter()
    try:
        run_probe(problems, llm, slm, get_grader("gsm8k"), RunStore(out), cfg, dataset="gsm8k/train",
                  grader_name="gsm8k", concurrency=concurrency)
    finally:
        llm.close()
        slm.close()
    return time.perf_counter() - t0, {r["problem_id"]: r for r in read_records(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description="probe --concurrency against vLLM: time and agreement with serial")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--build", action="store_true", help="build the vLLM environment if it is missing")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    from tandem.bench.datasets import load_benchmark
    from tandem.models import resolve_model
    from vllm_server import hf_folder, vllm_python, vllm_server, warm_up

    problems = list(load_benchmark("gsm8k", split="train"))[: args.problems]
    meta: dict[str, Any] = {
        "benchmark": "probe_concurrency", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "engine": "vLLM CPU, SmolLM2-135M bf16, one OpenMP thread, prefix caching on",
        "problems": len(problems), "concurrency": args.concurrency,
    }
    py = vllm_python(build=args.build)
    if py is None:
        sys.exit("no vLLM environment (.venv-vllm): run scripts/vllm_env.sh or pass --build")
    folder = hf_folder(py, resolve_model("smollm2-135m"))
    with tempfile.TemporaryDirectory(prefix="probe-conc-") as tmp, \
            vllm_server(py, folder, ["smol-llm", "smol-slm"], log_dir=Path(tmp)) as srv:
        warm_up(srv, "smol-llm")
        s_secs, serial = probe(srv.base_url, problems, Path(tmp) / "serial", 1)
        b_secs, batched = probe(srv.base_url, problems, Path(tmp) / "batched", args.concurrency)
        _, again = probe(srv.base_url, problems, Path(tmp) / "serial-again", 1)  # the noise floor
    payload = {**meta, "seconds_serial": round(s_secs, 1), "seconds_batched": round(b_secs, 1),
               "speedup": round(s_secs / b_secs, 2), "batched_vs_serial": compare(serial, batched),
               "serial_again_vs_serial": compare(serial, again)}
    text = json.dumps(payload, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
