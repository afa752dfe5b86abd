"""tandem's OpenAI backend against a real vLLM server (the CPU build, SmolLM2-135M).

The vLLM environment lives apart from tandem's (`.venv-vllm`, built by scripts/vllm_env.sh). These
tests run when it exists or when TANDEM_VLLM=1 (which builds it, ~3 minutes); otherwise they skip.
With TANDEM_VLLM=1 and TANDEM_REQUIRE_REAL=1 anything missing is a failure instead.

At most one vLLM server runs at a time: one shared server (both roles, as two served model names of
one engine) for most tests, then one with a reasoning parser and a template that opens a thought
(~35 s with its start) for the reasoning tests, then one that the last test kills mid-stream.
Servers run with one OpenMP thread; requests stay short (max_tokens <= 64, or a few hundred where a
hand-over must cancel the request before it ends).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
from tandem.cost import ModelCost
from tandem.errors import BackendError, UnsupportedError
from tandem.features import available_groups
from tandem.pipeline import THINK_OPEN, THINK_SEP, DecodingSettings, PipelineConfig, Tandem
from tandem.policy import EffortSetting, StopRule
from tandem.prompts import PromptSet
from tandem.types import Backend, GenerationRequest, Message, Prompt, TokenStream
from vllm_server import (
    FEATURE_ARGS,
    SMOL_PARAMS,
    VllmServer,
    hf_folder,
    metric,
    need_vllm,
    start_vllm,
    vllm_python,
    warm_up,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LLM, SLM = "smol-llm", "smol-slm"  # one engine, two served names: one per tandem role
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
ABORT_LOG = r"Aborted request|Request \S+ aborted"
BLOCK = 128  # vLLM's CPU KV-cache block: prefix caching reuses whole blocks only


@pytest.mark.parametrize(("vllm", "real", "outcome"), [
    ("1", "1", pytest.fail.Exception), ("1", "", pytest.skip.Exception), ("", "1", pytest.skip.Exception),
])
def test_missing_vllm_fails_only_when_asked_for_and_required(
    monkeypatch: pytest.MonkeyPatch, vllm: str, real: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("TANDEM_VLLM", vllm)
    monkeypatch.setenv("TANDEM_REQUIRE_REAL", real)
    with pytest.raises(outcome):
        need_vllm(False, "missing")
    need_vllm(True, "present")  # no effect


@pytest.fixture(scope="session")
def vllm_py() -> Path:
    py = vllm_python(build=False)
    if py is None:
        need_vllm(os.environ.get("TANDEM_VLLM") == "1",
                  "no vLLM environment (.venv-vllm): set TANDEM_VLLM=1 to build it (scripts/vllm_env.sh)")
        try:
            py = vllm_python(build=True)
        except (OSError, subprocess.SubprocessError) as exc:
            need_vllm(False, f"building the vLLM environment failed: {exc}")
            raise
    assert py is not None
    return py


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    from tandem.errors import ModelError
    from tandem.models import resolve_model

    try:
        return resolve_model("smollm2-135m")
    except ModelError as exc:
        need_vllm(False, f"SmolLM2-135M is not installed ({exc}): tandem models pull smollm2-135m")
        raise


@pytest.fixture(scope="session")
def smol_hf(vllm_py: Path, smol_gguf: Path) -> Path:
    return hf_folder(vllm_py, smol_gguf)


class ServerPool:
    """Hands out a server started with given arguments, kept for the next test that asks for the same
    ones (the shared server; the reasoning server), or a dedicated one; never two at once."""

    def __init__(self, py: Path, model_dir: Path, log_dir: Path) -> None:
        self.py, self.model_dir, self.log_dir = py, model_dir, log_dir
        self.current: VllmServer | None = None
        self.current_args: tuple[str, ...] | None = None  # None: dedicated to one test, not for reuse

    def _start(self, extra_args: tuple[str, ...]) -> VllmServer:
        self.close()
        server = start_vllm(self.py, self.model_dir, [LLM, SLM], log_dir=self.log_dir, extra_args=extra_args,
                            startup_timeout_s=180.0)
        warm_up(server)
        self.current = server
        return server

    def kept(self, extra_args: tuple[str, ...] = FEATURE_ARGS) -> VllmServer:
        if not (self.current_args == extra_args and self.current is not None and self.current.alive):
            self._start(extra_args)
            self.current_args = extra_args
        assert self.current is not None
        return self.current

    def shared(self) -> VllmServer:
        return self.kept(FEATURE_ARGS)

    def dedicated(self, extra_args: tuple[str, ...] = FEATURE_ARGS) -> VllmServer:
        self.current_args = None
        return self._start(extra_args)

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def pool(vllm_py: Path, smol_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    p = ServerPool(vllm_py, smol_hf, tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def server(pool: ServerPool) -> VllmServer:
    return pool.shared()


def backend(server: VllmServer, name: str = SLM, **kw: object) -> OpenAIBackend:
    cfg = {"base_url": server.base_url, "model": name, "n_params": SMOL_PARAMS, "n_ctx": 2048, "timeout_s": 60.0,
           "max_retries": 0, **kw}
    return OpenAIBackend(OpenAIBackendConfig.from_mapping(cfg))


def prompt(question: str = QUESTION, prefix: str = "") -> Prompt:
    return Prompt((Message("user", question),), assistant_prefix=prefix)


# ---- streaming, render, scoring ----------------------------------------------------------------------
def test_render_uses_the_servers_chat_template(server: VllmServer) -> None:
    with backend(server) as b:
        text = b.render(prompt())
        assert text.startswith("<|im_start|>system\n")
        assert f"<|im_start|>user\n{QUESTION}<|im_end|>\n" in text
        assert text.endswith("<|im_start|>assistant\n")
        assert b.render(prompt(prefix="Tom starts with")).endswith("<|im_start|>assistant\nTom starts with")


def test_render_matches_the_embedded_template(server: VllmServer, smol: Backend) -> None:
    """The converted folder carries the GGUF's chat template: one rendering on both engines."""
    with backend(server) as b:
        assert b.render(prompt(prefix="So")) == smol.render(prompt(prefix="So"))


def test_stream_has_a_logprob_and_entropy_for_every_token(server: VllmServer) -> None:
    with backend(server, top_logprobs=5) as b:
        stream = b.stream(GenerationRequest(prompt(), max_tokens=24))
        steps = list(stream)
        n_prompt = len(httpx.post(f"{server.root}/tokenize", json={"model": SLM, "prompt": b.render(prompt())},
                                  timeout=30.0).json()["tokens"])
    assert steps and stream.finish_reason in ("stop", "length")
    assert all(s.logprob is not None and s.logprob <= 1e-6 for s in steps)
    assert all(s.entropy is not None and s.entropy >= 0.0 for s in steps)
    assert stream.usage.generated_tokens == len(steps)  # one chunk per token, each with its log-probs
    assert stream.usage.prompt_tokens == n_prompt


def test_scoring_agrees_with_the_stream(server: VllmServer) -> None:
    """Prompt log-probs (echo + prompt_logprobs) of the text the model just generated equal the
    log-probs it streamed: the echo is aligned (no off-by-one) on vLLM."""
    with backend(server, top_logprobs=5) as b:
        stream = b.stream(GenerationRequest(prompt(), max_tokens=24))
        steps = list(stream)
        rendered = b.render(prompt())
        generated = "".join(s.text for s in steps)
        sr = b.score(rendered + generated)
    scored = sr.after(len(rendered))
    assert [s.text for s in scored] == [s.text for s in steps]
    diffs = [abs((a.logprob or 0.0) - (g.logprob or 0.0)) for a, g in zip(scored, steps, strict=True)]
    assert max(diffs) < 0.15, diffs  # prefill vs decode arithmetic in bfloat16; measured <= ~0.05
    assert sr.usage.prompt_tokens == len(sr.steps) and sr.usage.generated_tokens <= 1


def test_the_same_seed_gives_the_same_text_and_another_seed_another(server: VllmServer) -> None:
    """Sampled decoding on the engine: the role's sampling values reach vLLM (top_k = 1 makes a hot
    temperature greedy), and the request's seed makes a sample repeatable."""
    story = prompt("Write a short poem about the sea and a lighthouse keeper.")

    def sample(seed: int, **sampling: object) -> str:
        with backend(server, sampling={"temperature": 1.0, "top_p": 0.95, **sampling}) as b:
            return "".join(s.text for s in b.stream(GenerationRequest(story, max_tokens=32, seed=seed)))

    first, again, other, third = sample(1), sample(1), sample(2), sample(3)
    assert first and first == again
    assert len({first, other, third}) == 3  # 32 tokens at temperature 1: different seeds, different text
    greedy = sample(2, top_k=1)
    assert greedy == sample(3, top_k=1) != other  # top_k went through: the seed no longer matters
    with backend(server) as b:
        assert greedy == "".join(s.text for s in b.stream(GenerationRequest(story, max_tokens=32)))


class ReadsFeatures:
    """Never sufficient, but reads every feature (so every checkpoint does the shadow pass)."""

    name = "reads-features"

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def sufficiency(self, features: dict[str, float]) -> float:
        self.seen.append(dict(features))
        return 0.0


def _tandem(server: VllmServer, policy: ReadsFeatures) -> Tandem:
    rule = StopRule({"low": EffortSetting(max_budget=32)})
    cfg = PipelineConfig(effort="low", stage_budgets=(16, 32), max_unit_tokens=8,
                         decoding=DecodingSettings(llm_max_tokens=48, slm_max_tokens=64))
    return Tandem(backend(server, LLM), backend(server, SLM, top_logprobs=20), policy=policy, rule=rule, config=cfg)


def test_checkpoint_features_come_from_the_engine(server: VllmServer) -> None:
    """Both roles on vLLM: the SLM shadow-scores the LLM's stream over HTTP (prompt_logprobs); the
    checkpoint features hold the slm_q_* and slm_i_* groups computed from the engine's numbers."""
    policy = ReadsFeatures()
    t = _tandem(server, policy)
    try:
        r = t.solve(QUESTION)
    finally:
        t.llm.close()
        t.slm.close()
    assert r.stop_reason == "budget" and r.handover_tokens is not None and r.handover_tokens >= 32
    assert len(r.checkpoints) >= 2 and policy.seen
    last = r.checkpoints[-1].features
    assert {"slm_question", "slm_insights", "llm_stream"} <= set(available_groups(last))
    assert last["slm_i_n"] > 0 and last["slm_q_n"] > 0
    assert last["slm_i_lp_mean"] < 0.0 and last["slm_i_ent_mean"] > 0.0
    assert r.checkpoints[0].features["slm_i_n"] == 0.0  # checkpoint 0: nothing written yet
    slm = r.cost.models["slm"]
    assert slm.scored_tokens > 0 and slm.generated_tokens > 0
    assert r.cancel_latency_s is not None and r.cancel_latency_s < 1.0
    assert r.slm_text and r.text.startswith(r.llm_text)


# ---- cancellation ------------------------------------------------------------------------------------
def test_closing_the_stream_aborts_the_request_on_the_server(server: VllmServer) -> None:
    before_log = server.log_count(ABORT_LOG)
    before = server.metrics()
    gen_before = metric(before, "vllm:generation_tokens_total")
    # 256 tokens that only an abort cuts short (ignore_eos): a loaded client reads slowly while the
    # server runs ahead, so the bound below is half the request, not a few tokens
    with backend(server, sampling={"extra_body": {"ignore_eos": True}}) as b:
        stream = b.stream(GenerationRequest(prompt("Write a long story about a dragon and a knight."),
                                            max_tokens=256))
        received = [next(stream) for _ in range(3)]
        t_close = time.monotonic()
        stream.close()
    assert stream.cancelled and len(received) == 3
    seen_at = None
    while time.monotonic() - t_close < 1.0:
        if server.log_count(ABORT_LOG) > before_log:
            seen_at = time.monotonic() - t_close
            break
        time.sleep(0.01)
    assert seen_at is not None, f"no abort logged within 1 s:\n{server.log(2000)}"
    # the API server logs the abort first; the engine's gauges follow once it has processed it (poll:
    # on a loaded machine that takes a moment)
    deadline = time.monotonic() + 5.0
    after = server.metrics()
    while metric(after, "vllm:num_requests_running") != 0.0 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = server.metrics()
    assert metric(after, "vllm:num_requests_running") == 0.0
    # the engine stopped: far fewer than the 256 tokens asked for were generated, and no more come
    time.sleep(1.0)
    after = server.metrics()
    assert metric(after, "vllm:generation_tokens_total") - gen_before < 128


# ---- prefix caching ----------------------------------------------------------------------------------
LONG_SYSTEM = ("You are a careful math tutor. Explain each step, check the arithmetic twice, and end with "
               "the final number on its own line. ") * 14


def _long_prompt(question: str, prefix: str = "") -> Prompt:
    return Prompt((Message("system", LONG_SYSTEM), Message("user", question)), assistant_prefix=prefix)


def test_cached_prompt_tokens_are_reported_and_not_counted_as_computed(server: VllmServer) -> None:
    with backend(server) as b:
        first = b.stream(GenerationRequest(_long_prompt("What is 17 + 25?"), max_tokens=4))
        list(first)
        second = b.stream(GenerationRequest(_long_prompt("What is 9 times 7?"), max_tokens=4))
        list(second)
    u1, u2 = first.usage, second.usage
    assert u1.prompt_tokens > 2 * BLOCK
    assert u2.cached_prompt_tokens >= BLOCK and u2.cached_prompt_tokens % BLOCK == 0
    assert u2.computed_prompt_tokens == u2.prompt_tokens - u2.cached_prompt_tokens
    cost = ModelCost("smol", SMOL_PARAMS)
    cost.add(u2)
    assert cost.prompt_tokens_cached == u2.cached_prompt_tokens
    assert cost.prompt_tokens_computed == u2.computed_prompt_tokens
    assert cost.flops_total == 2.0 * SMOL_PARAMS * (u2.computed_prompt_tokens + u2.generated_tokens)


def test_shadow_scoring_never_reads_the_cache_but_fills_it_for_the_continuation(server: VllmServer) -> None:
    """tandem's SLM request pattern: score(question + insights) at every checkpoint, then continue.
    vLLM computes every prompt token of a request that asks for prompt log-probs (no cache hit,
    however often the prefix was seen), but the blocks it computed serve the next plain request."""
    insight = "Tom starts with 3 apples. He buys 4 more, so he has 3 + 4 apples."
    with backend(server) as b:
        text = b.render(_long_prompt("Tom has 3 apples and buys 4 more. How many now?", insight))
        s1 = b.score(text)
        s2 = b.score(text)
        cont = b.stream(GenerationRequest(_long_prompt("Tom has 3 apples and buys 4 more. How many now?", insight),
                                          max_tokens=8))
        list(cont)
    assert s1.usage.cached_prompt_tokens == 0 and s2.usage.cached_prompt_tokens == 0
    assert s2.usage.computed_prompt_tokens == s2.usage.prompt_tokens
    assert cont.usage.cached_prompt_tokens >= (cont.usage.prompt_tokens // BLOCK - 1) * BLOCK > 0


# ---- end to end ----------------------------------------------------------------------------------
def test_cli_solve_with_both_roles_on_vllm(server: VllmServer) -> None:
    cmd = [
        sys.executable, "-m", "tandem.cli", "solve", "--json", "--effort", "low",
        "--llm-base-url", server.base_url, "--llm-model", LLM, "--llm-params", str(SMOL_PARAMS),
        "--slm-base-url", server.base_url, "--slm-model", SLM, "--slm-params", str(SMOL_PARAMS),
        "--llm-max-tokens", "40", "--slm-max-tokens", "64", QUESTION,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["method"] == "tandem" and r["text"]
    llm = r["cost"]["models"]["llm"]
    assert llm["name"] == LLM and llm["generated_tokens"] > 0 and llm["prompt_tokens_computed"] > 0
    assert r["cost"]["flops_total"] > r["cost"]["flops_generated"] > 0


def _guide_config(tmp_path: Path, server: VllmServer) -> Path:
    """docs/deploy.md's config example, pointed at this server."""
    guide = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(# tandem\.toml.*?)```", guide, re.S)
    assert block, "docs/deploy.md has no '# tandem.toml' example"
    text = block.group(1)
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{server.base_url}"', text)
    text = re.sub(r'(\[llm\][^\[]*?)model = "[^"]*"', rf'\1model = "{LLM}"', text, flags=re.S)
    text = re.sub(r'(\[slm\][^\[]*?)model = "[^"]*"', rf'\1model = "{SLM}"', text, flags=re.S)
    text = re.sub(r"n_ctx = \d+", "n_ctx = 2048", text)
    text = re.sub(r"(llm|slm)_max_tokens = \d+", r"\1_max_tokens = 48", text)
    path = tmp_path / "tandem.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def tandem_serve(config: Path, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`tandem serve --config CONFIG` on a free loopback port, up and healthy: yields its root URL."""
    pytest.importorskip("fastapi")
    from vllm_server import free_port

    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "serve", "--config", str(config), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{root}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        yield root
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        log.close()


def test_tandem_serve_in_front_of_vllm_with_the_guides_config(server: VllmServer, tmp_path: Path) -> None:
    cfg = _guide_config(tmp_path, server)
    env = {"TANDEM_LLM_KEY": "unused-by-vllm", "TANDEM_SLM_KEY": "unused-by-vllm", "TANDEM_API_KEYS": "client-key"}
    headers = {"Authorization": "Bearer client-key"}
    with tandem_serve(cfg, tmp_path, env) as root:
        resp = httpx.post(f"{root}/v1/chat/completions", headers=headers, timeout=120.0, json={
            "model": "tandem-low", "max_tokens": 48, "messages": [{"role": "user", "content": QUESTION}]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
        metrics = httpx.get(f"{root}/metrics", headers=headers, timeout=10.0).text
        assert re.search(r'tandem_model_tokens_total\{[^}]*role="llm"', metrics)
        assert re.search(r'tandem_model_tokens_total\{[^}]*role="slm"', metrics)


# ---- feature parity with llama.cpp -------------------------------------------------------------------
# Tolerances from benchmarks/vllm_parity.py (SmolLM2-135M, vLLM bfloat16 on the HF conversion of the
# GGUF vs llama.cpp on the GGUF; 3 texts of ~110-150 tokens). Measured worst cases: per-token
# log-prob |diff| max 1.24 nats, mean 0.066; same top-k entropy estimator on both engines |diff| max
# 0.17, mean 0.03; log-prob features (slm_q_lp_*, slm_i_lp_*) max 0.30. Each bound is ~2x that.
# Entropies are NOT comparable with the embedded backend's: vLLM returns top-k log-probs only and
# tandem estimates a lower bound from them (measured mean gap to the exact entropy 0.74 nats at
# k = 20, 1.16 at k = 5; up to 4-5 nats on single tokens).
TOL_LP_TOKEN_MAX = 2.5
TOL_LP_TOKEN_MEAN = 0.15
TOL_TOPK_ENT_MAX = 0.4
TOL_TOPK_ENT_MEAN = 0.08
TOL_LP_FEATURE = 0.6


def test_logprobs_and_features_agree_with_llamacpp(server: VllmServer, smol_gguf: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import vllm_parity as vp

    llama = llama_cpp.Llama(str(smol_gguf), n_ctx=1024, n_threads=1, n_threads_batch=1, logits_all=True,
                            verbose=False)
    backends = {k: backend(server, SLM, top_logprobs=k) for k in vp.KS}
    try:
        res = vp.compare_text(backends, llama, vp.QUESTIONS[0], vp.INSIGHTS[0])
    finally:
        llama.close()
        for b in backends.values():
            b.close()
    assert res["logprob"]["max"] <= TOL_LP_TOKEN_MAX and res["logprob"]["mean"] <= TOL_LP_TOKEN_MEAN, res
    for k in vp.KS:
        same = res[f"entropy_top{k}_vs_llamacpp_top{k}"]
        assert same["max"] <= TOL_TOPK_ENT_MAX and same["mean"] <= TOL_TOPK_ENT_MEAN, res
        assert res[f"entropy_top{k}_minus_exact_mean"] < 0.0  # a lower bound, on average well below
    assert res["entropy_top5_minus_exact_mean"] < res["entropy_top20_minus_exact_mean"]  # more k, less gap
    for cmp, deltas in res["features"].items():
        lp = {n: d for n, d in deltas.items() if "_lp_" in n}
        assert max(lp.values()) <= TOL_LP_FEATURE, (cmp, lp)
        if cmp.endswith(("top5", "top20")):  # same estimator: the entropy features agree too
            ent = {n: d for n, d in deltas.items() if "_ent_" in n}
            assert max(ent.values()) <= TOL_LP_FEATURE, (cmp, ent)


# ---- a reasoning model: the thought in its own field (a server of its own) ----------------------------
# SmolLM2's template with the assistant's turn opening a thought, as a reasoning model's template does
THINKING_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)


class SeesPrompts(OpenAIBackend):
    """The SLM, keeping the prompts it was asked to continue."""

    def __init__(self, config: OpenAIBackendConfig) -> None:
        super().__init__(config)
        self.prompts: list[Prompt] = []

    def stream(self, request: GenerationRequest) -> TokenStream:
        self.prompts.append(request.prompt)
        return super().stream(request)


def _raw_stream(server: VllmServer, body: dict[str, object]) -> tuple[dict[str, str], dict[str, int]]:
    """vLLM's own streamed answer: the text of each delta field, and the usage."""
    fields = {"reasoning": "", "content": ""}
    usage: dict[str, int] = {}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", timeout=120.0, trust_env=False,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                for name in fields:
                    fields[name] += choice["delta"].get(name) or ""
    return fields, usage


@pytest.fixture(scope="session")
def thinking_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "thinking.jinja"
    path.write_text(THINKING_TEMPLATE)
    return path


@pytest.fixture
def reasoning_server(pool: ServerPool, thinking_template: Path) -> VllmServer:
    """vLLM with a reasoning parser (`olmo3`: it finds `</think>` as text, which SmolLM2's vocabulary
    splits into pieces) and a template that opens the thought; kept for the tests that follow."""
    return pool.kept((*FEATURE_ARGS, "--reasoning-parser", "olmo3", "--chat-template", str(thinking_template)))


def test_reasoning_parser_thought_streams_counts_and_hands_over(reasoning_server: VllmServer,
                                                                smol_hf: Path) -> None:
    """A reasoning server: the backend streams the thought from `delta.reasoning` as vLLM's own answer
    has it, counts tokens as vLLM's usage does (with and without the usage chunk), and a tandem run
    hands the thought over, cancelling the LLM's request."""
    server = reasoning_server
    fields, usage = _raw_stream(server, {"model": LLM, "messages": [{"role": "user", "content": QUESTION}],
                                         "max_tokens": 24, "temperature": 0.0})
    assert fields["reasoning"]  # the parser put the output in the thought's field
    expected = fields["reasoning"] + (THINK_SEP + fields["content"] if fields["content"] else "")
    for stream_usage in (True, False):  # from the usage chunk; counted from the log-prob entries
        with backend(server, LLM, api="chat", reasoning=True, stream_usage=stream_usage) as llm:
            assert llm.info.thinks
            stream = llm.stream(GenerationRequest(prompt(), max_tokens=24))
            steps = list(stream)
        assert "".join(s.text for s in steps) == expected
        assert len(steps) == stream.usage.generated_tokens == usage["completion_tokens"]
        assert stream.usage.prompt_tokens == usage["prompt_tokens"]

    slm_template = (smol_hf / "chat_template.jinja").read_text()
    slm = SeesPrompts(OpenAIBackendConfig(base_url=server.base_url, model=SLM, n_params=SMOL_PARAMS, n_ctx=2048,
                                          timeout_s=60.0, max_retries=0, chat_template=slm_template))
    # ignore_eos: the request runs its 400 tokens unless aborted, so an early end of the model's own
    # cannot pass for the abort's absence when a loaded machine reads the stream slowly
    llm = backend(server, LLM, api="chat", reasoning=True, stream_usage=True,
                  sampling={"extra_body": {"ignore_eos": True}})
    cfg = PipelineConfig(effort="low", stage_budgets=(12,), max_unit_tokens=8, shadow=False,
                         decoding=DecodingSettings(llm_max_tokens=400, slm_max_tokens=16))
    # room for 400 tokens: the server cannot finish the LLM's request before the hand-over cancels it,
    # however slowly a loaded machine reads the stream
    t = Tandem(llm, slm, rule=StopRule({"low": EffortSetting(max_budget=12)}), config=cfg)
    aborts = server.log_count(ABORT_LOG)
    try:
        r = t.solve(QUESTION)
    finally:
        llm.close()
        slm.close()
    assert r.stop_reason == "budget" and r.handover_tokens is not None and r.handover_tokens >= 12
    handed = slm.prompts[-1].assistant_prefix
    with backend(server, LLM, api="chat", reasoning=True) as again:  # the same prompt, streamed whole
        whole = "".join(s.text for s in again.stream(GenerationRequest(PromptSet("math").solve(QUESTION),
                                                                       max_tokens=48)))
    assert handed.strip() and handed == r.llm_text and whole.startswith(r.llm_text)
    assert r.text.startswith(THINK_OPEN + r.llm_text + THINK_SEP)
    cost = r.cost.models["llm"]
    assert cost.generated_tokens == r.handover_tokens  # the cancelled stream: one log-prob entry a token
    solve = [{"role": m.role, "content": m.content} for m in PromptSet("math").solve(QUESTION).messages]
    _, solve_usage = _raw_stream(server, {"model": LLM, "messages": solve, "max_tokens": 1})
    assert cost.prompt_tokens_computed == solve_usage["prompt_tokens"]  # counted on the server's /tokenize
    deadline = time.monotonic() + 30.0  # the engine logs the abort when it gets to it: slow on a loaded machine
    while server.log_count(ABORT_LOG) == aborts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.log_count(ABORT_LOG) > aborts, server.log(2000)


def _serve_config(tmp_path: Path, server: VllmServer) -> Path:
    """`tandem serve` with the reasoning LLM on vLLM and the SLM embedded (llama.cpp, SmolLM2)."""
    path = tmp_path / "tandem.toml"
    path.write_text(f"""classifier = "budget"
[llm]
kind = "openai"
base_url = "{server.base_url}"
model = "{LLM}"
api = "chat"
reasoning = true
n_params = {SMOL_PARAMS}
n_ctx = 2048
max_retries = 0
[slm]
model = "smollm2-135m"
n_threads = 1
n_ctx = 2048
[pipeline]
stage_budgets = [12]
effort_budgets = {{ low = 12, medium = 12, high = 12 }}
shadow = false
llm_max_tokens = 400
slm_max_tokens = 16
[server]
stream_keepalive_s = 1.0
""")
    return path


def test_tandem_serve_sends_the_llms_thought_in_its_own_field(reasoning_server: VllmServer, tmp_path: Path) -> None:
    """In front of a reasoning LLM on vLLM, a streamed answer opens with the role chunk, carries the
    LLM's thought up to the hand-over in `delta.reasoning_content` and the SLM's answer in `content`;
    a whole answer carries the same two in its message."""
    messages = [{"role": "user", "content": QUESTION}]
    body = {"model": "tandem-low", "messages": messages}
    with tandem_serve(_serve_config(tmp_path, reasoning_server), tmp_path) as root:
        chunks: list[dict[str, object]] = []
        with httpx.stream("POST", f"{root}/v1/chat/completions", timeout=120.0,
                          json={**body, "stream": True}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[len("data: "):]))
        whole = httpx.post(f"{root}/v1/chat/completions", timeout=120.0, json=body)
    assert whole.status_code == 200, whole.text
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]  # type: ignore[index]
    assert deltas[0].get("role") == "assistant"
    thought = "".join(d.get("reasoning_content") or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    assert thought.strip() and answer.strip()
    assert "<think>" not in answer and "</think>" not in answer and "</think>" not in thought
    solve = [{"role": m.role, "content": m.content} for m in PromptSet("math").solve(QUESTION).messages]
    own, _ = _raw_stream(reasoning_server, {"model": LLM, "messages": solve, "max_tokens": 48, "temperature": 0.0})
    assert own["reasoning"].startswith(thought)  # the LLM's own thought, cut at the hand-over
    message = whole.json()["choices"][0]["message"]
    assert message["reasoning_content"] == thought and message["content"] == answer


def test_an_endpoint_that_hides_the_thought_is_refused_and_its_tokens_paid(reasoning_server: VllmServer) -> None:
    """vLLM asked to leave the thought out (`include_reasoning: false`, as a deployment that keeps it
    private): the stream has no thought and no log-probs, and its usage no reasoning tokens (`olmo3`
    cannot count them), only the generated count. A hand-over is refused with the one clear error (the
    next one before any request); the LLM alone still answers, every generated token paid."""
    hide = {"sampling": {"extra_body": {"include_reasoning": False}}}
    solve = PromptSet("math").solve(QUESTION)
    fields, usage = _raw_stream(reasoning_server, {
        "model": LLM, "max_tokens": 48, "temperature": 0.0, "include_reasoning": False,
        "messages": [{"role": m.role, "content": m.content} for m in solve.messages]})
    assert not fields["reasoning"] and usage["completion_tokens"] > 0  # what the endpoint shows
    with backend(reasoning_server, LLM, api="chat", reasoning=True, **hide) as llm:
        stream = llm.stream(GenerationRequest(solve, max_tokens=48, thought_handover=True))
        with pytest.raises(UnsupportedError, match="hides the model's thought"):
            list(stream)
        assert stream.usage.generated_tokens == usage["completion_tokens"]
        with pytest.raises(UnsupportedError, match="hides the model's thought"):
            llm.stream(GenerationRequest(solve, max_tokens=48, thought_handover=True))

    def pair() -> Tandem:
        cfg = PipelineConfig(effort="low", stage_budgets=(12,), max_unit_tokens=8, shadow=False,
                             decoding=DecodingSettings(llm_max_tokens=48, slm_max_tokens=16))
        return Tandem(backend(reasoning_server, LLM, api="chat", reasoning=True, **hide), backend(reasoning_server),
                      rule=StopRule({"low": EffortSetting(max_budget=12)}), config=cfg)

    for method in ("tandem", "llm"):
        t = pair()
        try:
            if method == "tandem":
                with pytest.raises(UnsupportedError, match="hides the model's thought"):
                    t.solve(QUESTION)
            else:
                alone = t.solve(QUESTION, method="llm")
                assert alone.cost.models["llm"].generated_tokens == usage["completion_tokens"]
        finally:
            t.llm.close()
            t.slm.close()


# ---- a server that dies (last: stops the shared server, starts one of its own) ---------------------
def test_server_killed_mid_stream_raises_a_backend_error(pool: ServerPool) -> None:
    server = pool.dedicated()
    b = backend(server, timeout_s=30.0)
    try:
        stream = b.stream(GenerationRequest(prompt("Write a long story about a dragon."), max_tokens=64))
        first = next(stream)
        assert first.text is not None
        t0 = time.monotonic()
        server.kill()
        with pytest.raises(BackendError):
            for _ in stream:
                pass
        assert time.monotonic() - t0 < 20.0
        with pytest.raises(BackendError):  # and the next request fails at once, no hang
            list(b.stream(GenerationRequest(prompt(), max_tokens=4)))
    finally:
        b.close()
        pool.close()
