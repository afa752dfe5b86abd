"""Feature parity of vLLM and llama.cpp: per-token log-probs, entropies and checkpoint features of the
same text on SmolLM2-135M (prints one JSON object).

vLLM serves the HF folder converted from the very GGUF file llama.cpp loads (scripts/gguf_to_hf.py:
the quantised weights dequantised, stored in bfloat16); the two engines then differ only in their
kernels and arithmetic (llama.cpp: Q4_1 weights times Q8 activations; vLLM: bfloat16).

Entropy is not the same quantity on both sides. The embedded llama.cpp backend computes the exact
entropy of the full distribution (49,152 tokens). An OpenAI-compatible server returns only the top-k
log-probs (tandem's default k = 5; vLLM allows up to `--max-logprobs`, 20 here), and tandem's HTTP
backend estimates the entropy from them (`topk_entropy`: the top-k buckets plus one bucket for the
rest), a lower bound of the exact entropy. To separate the two effects this script also computes,
from llama.cpp's full logits, the same top-k estimate vLLM's answer allows:

- `logprob`: vLLM vs llama.cpp, per token (the engines' arithmetic);
- `entropy_top{k}_vs_llamacpp_top{k}`: the same estimator on both engines (arithmetic only);
- `entropy_top{k}_vs_exact`: what an HTTP backend's estimate loses against the exact entropy;
- `features`: `compute_features` on both (the shadow pass's `slm_q_*` and `slm_i_*` groups), the
  |difference| of every statistic (the summary: the largest per group and kind, and which one), for vLLM top-5 / top-20 against llama.cpp exact and
  against llama.cpp top-k (what a classifier trained on one engine sees on the other);
- `generation`: greedy generation on both; how many tokens agree, and log-prob differences on the
  common prefix.

    .venv/bin/python benchmarks/vllm_parity.py [--gen-tokens 48] [--json-out FILE]

Needs the vLLM environment (`scripts/vllm_env.sh`; `--build` builds it) and llama-cpp-python. One
vLLM server (one OpenMP thread) runs for the duration; llama.cpp runs with one thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig, topk_entropy  # noqa: E402
from tandem.features import FEATURE_GROUPS, SHADOW_GROUPS, CheckpointInputs, compute_features  # noqa: E402
from tandem.prompts import PromptSet  # noqa: E402
from tandem.types import GenerationRequest, Prompt, TokenStep  # noqa: E402

QUESTIONS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Write a Python function that returns the n-th Fibonacci number.",
)
INSIGHTS = (
    "In April Natalia sold 48 clips. In May she sold half as many, 48 / 2 = 24 clips. "
    "Altogether she sold 48 + 24 = 72 clips.",
    "Weng earns 12 / 60 = 0.2 dollars per minute. For 50 minutes she earned 0.2 * 50 = 10 dollars.",
    "Goal: compute the n-th Fibonacci number.\nPlanning: iterate, keeping the last two numbers.\n"
    "Action: start with a, b = 0, 1 and repeat n times a, b = b, a + b.",
)
KS = (5, 20)


@dataclass
class Reference:
    """llama.cpp's view of one text: tokens, and per token (from the second on) the log-prob, the
    exact entropy and the top-k entropy estimates."""

    pieces: list[str]
    logprob: np.ndarray
    exact: np.ndarray
    topk: dict[int, np.ndarray]


def llama_reference(llama: Any, text: str, ks: Sequence[int] = KS) -> Reference:
    """Full logits from a `llama_cpp.Llama(logits_all=True)`; no BOS (none of the models here adds one)."""
    llama.reset()
    toks = llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    llama.eval(toks)
    logits = np.asarray(llama.scores[: len(toks)], dtype=np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    logp = z - lse[:, None]
    p = np.exp(logp)
    rows = logp[:-1]  # row i predicts token i + 1
    nxt = np.asarray(toks[1:])
    lp = rows[np.arange(len(nxt)), nxt]
    exact = -(p[:-1] * logp[:-1]).sum(axis=1)
    topk: dict[int, np.ndarray] = {}
    order = np.argsort(-rows, axis=1)[:, : max(ks)]
    for k in ks:
        est = []
        for i in range(len(nxt)):
            vals = list(rows[i, order[i, :k]])
            if nxt[i] not in order[i, :k]:
                vals.append(lp[i])  # the server also reports the prompt token's own log-prob
            est.append(topk_entropy(vals))
        topk[k] = np.asarray(est, dtype=np.float64)
    pieces = [llama.detokenize([t], special=True).decode("utf-8", errors="replace") for t in toks]
    return Reference(pieces, lp, exact, topk)


def absdiff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> dict[str, float]:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {"max": round(float(d.max()), 4), "mean": round(float(d.mean()), 4),
            "p90": round(float(np.quantile(d, 0.9)), 4), "n": int(d.size)}


def signed_mean(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.mean(np.asarray(a) - np.asarray(b))), 4)


def shadow_split(text: str, question: str, start: int, pieces: Sequence[str]) -> tuple[list[int], list[int]]:
    """Indices (into the tokens from the second on) of the question's and the insight's tokens, by
    character offset, as the pipeline splits a shadow pass."""
    offsets, pos = [], 0
    for p in pieces:
        offsets.append(pos)
        pos += len(p)
    qpos = text.find(question.strip())
    q_end = qpos + len(question.strip())
    q_idx = [i - 1 for i, o in enumerate(offsets) if i > 0 and qpos <= o < q_end]
    i_idx = [i - 1 for i, o in enumerate(offsets) if i > 0 and o >= start]
    return q_idx, i_idx


def features_of(lp: np.ndarray, ent: np.ndarray, q_idx: list[int], i_idx: list[int]) -> dict[str, float]:
    def steps(idx: list[int]) -> list[TokenStep]:
        return [TokenStep("", float(lp[i]), float(ent[i])) for i in idx]

    return compute_features(CheckpointInputs(1, len(i_idx), [], [], steps(q_idx), steps(i_idx)))


def feature_deltas(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """|a - b| of every log-prob and entropy statistic in the shadow groups."""
    return {name: round(abs(a[name] - b[name]), 4) for group in SHADOW_GROUPS for name in FEATURE_GROUPS[group]
            if "_lp_" in name or "_ent_" in name}


def group_of(name: str) -> str:
    """`slm_q_lp_min` -> `slm_q.lp`."""
    head, kind = ("lp", name.split("_lp_")) if "_lp_" in name else ("ent", name.split("_ent_"))
    return f"{kind[0]}.{head}"


def vllm_steps(backend: OpenAIBackend, text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    sr = backend.score(text)
    steps = sr.steps
    lp = np.asarray([s.logprob for s in steps[1:]], dtype=np.float64)
    ent = np.asarray([s.entropy if s.entropy is not None else math.nan for s in steps[1:]], dtype=np.float64)
    return [s.text for s in steps], lp, ent


def compare_text(backends: dict[int, OpenAIBackend], llama: Any, question: str, insight: str) -> dict[str, Any]:
    """Score `solve prompt + insight` (a continue-mode shadow pass) on both engines and compare."""
    prompts = PromptSet("math")
    base = backends[KS[0]].render(prompts.solve(question))
    text = base + insight
    ref = llama_reference(llama, text)
    out: dict[str, Any] = {"tokens": len(ref.pieces)}
    v: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k, b in backends.items():
        pieces, lp, ent = vllm_steps(b, text)
        if pieces[1:] != ref.pieces[1:]:
            raise RuntimeError(f"the engines tokenise the text differently: {pieces[:8]} vs {ref.pieces[:8]}")
        v[k] = (lp, ent)
    lp_v = v[KS[-1]][0]
    out["logprob"] = absdiff(lp_v, ref.logprob)
    out["logprob_signed_mean"] = signed_mean(lp_v, ref.logprob)
    for k in KS:
        ent_v = v[k][1]
        out[f"entropy_top{k}_vs_llamacpp_top{k}"] = absdiff(ent_v, ref.topk[k])
        out[f"entropy_top{k}_vs_exact"] = absdiff(ent_v, ref.exact)
        out[f"entropy_top{k}_minus_exact_mean"] = signed_mean(ent_v, ref.exact)
        out[f"llamacpp_top{k}_minus_exact_mean"] = signed_mean(ref.topk[k], ref.exact)
    q_idx, i_idx = shadow_split(text, question, len(base), ref.pieces)
    exact_f = features_of(ref.logprob, ref.exact, q_idx, i_idx)
    feats: dict[str, Any] = {}
    for k in KS:
        lp_k, ent_k = v[k]
        vf = features_of(lp_k, ent_k, q_idx, i_idx)
        feats[f"vllm_top{k}_vs_llamacpp_exact"] = feature_deltas(vf, exact_f)
        feats[f"vllm_top{k}_vs_llamacpp_top{k}"] = feature_deltas(vf, features_of(ref.logprob, ref.topk[k], q_idx, i_idx))
    out["features"] = feats
    return out


def compare_generation(backend: OpenAIBackend, embedded: Any, question: str, n: int) -> dict[str, Any]:
    prompt: Prompt = PromptSet("math").solve(question)
    req = GenerationRequest(prompt, max_tokens=n, temperature=0.0)
    with backend.stream(req) as s:
        vs = list(s)
    with embedded.stream(req) as s:
        ls = list(s)
    agree = 0
    for a, b in zip(vs, ls, strict=False):
        if a.text != b.text:
            break
        agree += 1
    out: dict[str, Any] = {"generated": [len(vs), len(ls)], "agreeing_prefix_tokens": agree}
    if agree:
        def arr(values: list[float | None]) -> np.ndarray:
            return np.asarray([math.nan if x is None else x for x in values], dtype=np.float64)

        out["logprob"] = absdiff(arr([s.logprob for s in vs[:agree]]), arr([s.logprob for s in ls[:agree]]))
        out["entropy_top_k_minus_exact_mean"] = signed_mean(
            arr([s.entropy for s in vs[:agree]]), arr([s.entropy for s in ls[:agree]]))
    return out


def summarize(per_text: list[dict[str, Any]]) -> dict[str, Any]:
    """Worst case over texts of every max / mean figure (the numbers a tolerance must cover)."""
    def worst(key: str, stat: str) -> float:
        return max(t[key][stat] for t in per_text)

    s: dict[str, Any] = {"logprob_max": worst("logprob", "max"), "logprob_mean": worst("logprob", "mean")}
    for k in KS:
        s[f"entropy_top{k}_vs_llamacpp_top{k}_max"] = worst(f"entropy_top{k}_vs_llamacpp_top{k}", "max")
        s[f"entropy_top{k}_vs_llamacpp_top{k}_mean"] = worst(f"entropy_top{k}_vs_llamacpp_top{k}", "mean")
        s[f"entropy_top{k}_vs_exact_max"] = worst(f"entropy_top{k}_vs_exact", "max")
        s[f"entropy_top{k}_vs_exact_mean"] = worst(f"entropy_top{k}_vs_exact", "mean")
    feats: dict[str, dict[str, Any]] = {}
    for t in per_text:
        for cmp, deltas in t["features"].items():
            for name, val in deltas.items():
                slot = feats.setdefault(cmp, {}).setdefault(group_of(name), {"max": 0.0, "feature": name})
                if val > slot["max"]:
                    slot.update(max=val, feature=name)
    s["features_max_abs_diff"] = feats
    return s


def run(server_base_url: str, model: str, gguf: Path, gen_tokens: int) -> dict[str, Any]:
    import llama_cpp

    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    backends = {k: OpenAIBackend(OpenAIBackendConfig(base_url=server_base_url, model=model, n_params=1,
                                                     n_ctx=2048, top_logprobs=k, timeout_s=120.0)) for k in KS}
    llama = llama_cpp.Llama(str(gguf), n_ctx=1024, n_threads=1, n_threads_batch=1, logits_all=True, verbose=False)
    embedded = LlamaCppBackend(LlamaCppConfig(str(gguf), n_ctx=2048, n_threads=1))
    embedded.adapter.llama._ctx.set_n_threads(1, 1)  # Llama(n_threads=1) leaves the batch threads at all cores
    try:
        texts = [compare_text(backends, llama, q, i) for q, i in zip(QUESTIONS, INSIGHTS, strict=True)]
        gens = [compare_generation(backends[KS[0]], embedded, q, gen_tokens) for q in QUESTIONS[:2]]
    finally:
        for b in backends.values():
            b.close()
        llama.close()
        embedded.close()
    return {"summary": summarize(texts), "texts": texts, "generation": gens}


def main() -> None:
    ap = argparse.ArgumentParser(description="vLLM vs llama.cpp: log-probs, entropies, features (SmolLM2-135M)")
    ap.add_argument("--gguf", type=Path, default=None, help="default: the installed smollm2-135m")
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--build", action="store_true", help="build the vLLM environment if it is missing")
    ap.add_argument("--base-url", default=None, help="use a running vLLM server instead of starting one")
    ap.add_argument("--model", default="smollm2", help="served model name (with --base-url)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    from tandem.models import resolve_model
    from vllm_server import hf_folder, vllm_python, vllm_server, warm_up

    gguf = args.gguf or resolve_model("smollm2-135m")
    t0 = time.time()
    meta: dict[str, Any] = {
        "benchmark": "vllm_parity", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "model": gguf.name, "texts": len(QUESTIONS), "generations": 2, "gen_tokens": args.gen_tokens,
        "vllm_dtype": "bfloat16", "threads": {"vllm": 1, "llamacpp": 1},
    }
    if args.base_url:
        result = run(args.base_url, args.model, gguf, args.gen_tokens)
    else:
        py = vllm_python(build=args.build)
        if py is None:
            sys.exit("no vLLM environment (.venv-vllm): run scripts/vllm_env.sh or pass --build")
        folder = hf_folder(py, gguf)
        with tempfile.TemporaryDirectory(prefix="vllm-parity-") as tmp, \
                vllm_server(py, folder, ["smollm2"], log_dir=Path(tmp)) as srv:
            warm_up(srv)
            result = run(srv.base_url, "smollm2", gguf, args.gen_tokens)
    meta["seconds"] = round(time.time() - t0, 1)
    payload = {**meta, **result}
    text = json.dumps(payload, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
