"""Overhead of tandem's own machinery with the embedded pair (prints measured figures).

- per-checkpoint feature + decision time (p50 / p99), excluding the SLM's shadow pass;
- time from the stop decision to the LLM stream's end (cancellation latency);
- the shadow pass's cost per insight token (seconds per token scored).

A feature-reading policy that never judges the insights sufficient makes every checkpoint do the
full work (shadow pass, features, decision) until the effort's budget hands over.

    python benchmarks/overhead.py --limit 10 [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from tandem.bench.datasets import load_benchmark
from tandem.config import load_settings
from tandem.factory import build_tandem


class ReadsFeatures:
    name = "reads-features"

    def sufficiency(self, features: dict[str, float]) -> float:
        return 0.0 * sum(features.values())  # touches every feature, never sufficient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--effort", default="high")
    args = ap.parse_args()
    problems = load_benchmark("gsm8k", args.data_dir, "train").select(limit=args.limit)
    tandem = build_tandem(load_settings(None, {"classifier": "budget"}))
    tandem.policy = ReadsFeatures()
    decide, cancel, score_s, score_tok = [], [], 0.0, 0
    t0 = time.time()
    for p in problems:
        for b in (tandem.llm, tandem.slm):
            b.reset_cache()  # type: ignore[attr-defined]
        r = tandem.solve(p.question, effort=args.effort)
        decide += [c.decide_seconds for c in r.checkpoints]
        for c in r.checkpoints:
            score_s += c.score_seconds
        score_tok += r.cost.models["slm"].scored_tokens
        if r.cancel_latency_s is not None:
            cancel.append(r.cancel_latency_s)
    q = lambda xs, k: float(np.percentile(xs, k)) * 1000 if xs else float("nan")  # noqa: E731
    out = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "problems": len(problems), "checkpoints": len(decide), "handovers_with_cancel": len(cancel),
        "decide_ms_p50": q(decide, 50), "decide_ms_p99": q(decide, 99),
        "cancel_ms_p50": q(cancel, 50), "cancel_ms_p99": q(cancel, 99),
        "shadow_ms_per_token": 1000 * score_s / max(score_tok, 1),
        "shadow_tokens": score_tok, "seconds": time.time() - t0,
        "mean_decide_ms": statistics.mean(decide) * 1000 if decide else None,
    }
    print(json.dumps(out, indent=2))
    tandem.llm.close()
    tandem.slm.close()


if __name__ == "__main__":
    main()
