"""What the SLM's read of a reasoning-length prefix costs over HTTP on vLLM, per checkpoint.

A CPU vLLM server (SmolLM2-135M, 4,096 tokens of context, prefix caching on) and one ~2,000-token
prefix (GSM8K train solutions joined into one long text), read at five checkpoints (400, 800, 1,200,
1,600 and 2,000 tokens) the two ways tandem can read it:
- a scoring pass (`OpenAIBackend.score`: echo with prompt log-probs, what the shadow-pass features
  need); vLLM skips its prefix cache for requests that ask for prompt log-probs, so each one
  re-reads the whole prefix;
- a trial request (an ordinary generation of a few tokens after the prefix, what trial-answer
  features need), which the prefix cache serves: only the new text is computed.
Prints, per checkpoint and in total, the prompt tokens the server computed (prompt - cached, as
it reports them) and the seconds, for both, beside the incremental ideal (each token read once).

    .venv/bin/python benchmarks/shadow_cost_http.py [--repeats 3] [--json-out FILE]

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CHECKPOINTS = (400, 800, 1200, 1600, 2000)


def main() -> None:
    ap = argparse.ArgumentParser(description="scoring pass vs trial request over HTTP at reasoning lengths")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the five checkpoints (medians)")
    ap.add_argument("--build", action="store_true", help="build the vLLM environment if it is missing")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
    from tandem.bench.datasets import load_benchmark
    from tandem.models import resolve_model
    from tandem.types import GenerationRequest, Message, Prompt
    from vllm_server import FEATURE_ARGS, SMOL_PARAMS, hf_folder, vllm_python, vllm_server, warm_up

    py = vllm_python(build=args.build)
    if py is None:
        sys.exit("no vLLM environment (.venv-vllm): run scripts/vllm_env.sh or pass --build")
    folder = hf_folder(py, resolve_model("smollm2-135m"))
    text = "\n\n".join(p.question for p in list(load_benchmark("gsm8k", split="train"))[:60])
    meta: dict[str, Any] = {
        "benchmark": "shadow_cost_http", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "engine": "vLLM CPU, SmolLM2-135M bf16, one OpenMP thread, prefix caching on, 4096 tokens of context",
        "checkpoints": list(CHECKPOINTS), "repeats": args.repeats,
    }
    rows: dict[str, list[list[tuple[int, float]]]] = {"score": [], "trial": []}
    with tempfile.TemporaryDirectory(prefix="shadow-cost-") as tmp, \
            vllm_server(py, folder, ["smollm2"], log_dir=Path(tmp),
                        extra_args=(*FEATURE_ARGS, "--max-model-len", "4096")) as srv:
        warm_up(srv)
        b = OpenAIBackend(OpenAIBackendConfig(base_url=srv.base_url, model="smollm2", n_params=SMOL_PARAMS,
                                              n_ctx=4096, timeout_s=600.0, max_retries=0, prompt_logprobs=True))
        # cut by characters (about 4.2 a token here); the server's own prompt-token counts are reported
        assert len(text) > 4.2 * CHECKPOINTS[-1], "the prefix text is too short"
        pieces = [text[: int(n * 4.2)] for n in CHECKPOINTS]
        lengths: list[int] = []
        for r in range(args.repeats):
            salt = f"Round {r} of {time.time()}.\n"  # a fresh prefix per round: nothing cached from the last
            for kind in ("score", "trial"):
                got: list[tuple[int, float]] = []
                for piece in pieces:
                    prompt = Prompt((Message("user", salt + kind + ": read on and answer."),), assistant_prefix=piece)
                    t0 = time.perf_counter()
                    if kind == "score":
                        usage = b.score(b.render(prompt)).usage
                        if r == 0:
                            lengths.append(int(usage.prompt_tokens))
                    else:
                        with b.stream(GenerationRequest(prompt, max_tokens=16)) as s:
                            for _ in s:
                                pass
                        usage = s.usage
                    got.append((int(usage.computed_prompt_tokens), time.perf_counter() - t0))
                rows[kind].append(got)
        b.close()
    table = {}
    for kind, rounds in rows.items():
        per_ck = [{"computed_prompt_tokens": int(np.median([rd[i][0] for rd in rounds])),
                   "seconds": round(float(np.median([rd[i][1] for rd in rounds])), 3)} for i in range(len(CHECKPOINTS))]
        table[kind] = {"per_checkpoint": per_ck,
                       "total_computed_tokens": sum(x["computed_prompt_tokens"] for x in per_ck),
                       "total_seconds": round(sum(x["seconds"] for x in per_ck), 3)}
    payload = {**meta, "prompt_tokens_at_checkpoints": lengths,
               "incremental_ideal_tokens": lengths[-1], **table,
               "score_over_trial_tokens": round(table["score"]["total_computed_tokens"]
                                                / max(1, table["trial"]["total_computed_tokens"]), 2),
               "score_over_trial_seconds": round(table["score"]["total_seconds"]
                                                 / max(1e-9, table["trial"]["total_seconds"]), 2)}
    out = json.dumps(payload, indent=2)
    if args.json_out:
        args.json_out.write_text(out + "\n")
    print(out)


if __name__ == "__main__":
    main()
