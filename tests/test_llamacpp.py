"""The embedded llama.cpp backend against a real model (SmolLM2-135M), checked against the public API."""

from __future__ import annotations

import numpy as np
import pytest

from tandem import ConfigError, DecodingSettings, GenerationRequest, PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.errors import ModelError
from tandem.prompts import PromptSet

pytestmark = pytest.mark.real
PS = PromptSet("math")
Q = "A farmer has 12 cows and buys 30 more. How many cows does the farmer have now?"


def gen(backend, prompt, n=24):
    s = backend.stream(GenerationRequest(prompt, max_tokens=n))
    steps = list(s)
    return "".join(x.text for x in steps), steps, s


def test_stream_matches_public_create_completion(smol, smol_path):
    import llama_cpp

    text, steps, s = gen(smol, PS.solve(Q), 24)
    assert s.usage.generated_tokens == 24 and s.finish_reason == "length"
    assert all(st.logprob is not None and st.logprob <= 0 and st.entropy >= 0 for st in steps)
    ref = llama_cpp.Llama(model_path=str(smol_path), n_ctx=2048, n_threads=2, verbose=False)
    out = ref.create_completion(smol.render(PS.solve(Q)), max_tokens=24, temperature=0.0)
    assert out["choices"][0]["text"] == text
    ref.close()


def test_stream_logprobs_equal_scoring_logprobs(fresh_smol):
    b = fresh_smol()
    prompt = PS.solve(Q)
    text, steps, _ = gen(b, prompt, 16)
    scored = fresh_smol().score(b.render(prompt) + text)
    tail = scored.steps[-len(steps):]
    assert "".join(t.text for t in tail) == text
    # batched scoring and one-token decoding use different kernels: equal up to float noise of the
    # quantised matmuls (measured max 0.09 nats on SmolLM2 Q4_1), never systematically apart
    a = np.array([t.logprob for t in tail])
    b_ = np.array([s.logprob for s in steps])
    np.testing.assert_allclose(a, b_, atol=0.15)
    assert abs(float((a - b_).mean())) < 0.03
    np.testing.assert_allclose([t.entropy for t in tail], [s.entropy for s in steps], atol=0.2)


def test_cancellation_stops_generation_and_next_call_is_unaffected(fresh_smol):
    b = fresh_smol()
    s = b.stream(GenerationRequest(PS.solve(Q), max_tokens=200))
    it = iter(s)
    first = [next(it).text for _ in range(5)]
    evaluated = b.adapter.evaluated
    s.close()
    assert s.cancelled and s.usage.generated_tokens == 5
    assert b.adapter.evaluated == evaluated  # no decode after the cancellation
    again, _, _ = gen(b, PS.solve(Q), 5)
    assert again == "".join(first)


def test_shadow_pass_equals_fresh_model_and_handover_computes_no_prompt_again(fresh_smol):
    shadow, fresh = fresh_smol(), fresh_smol()
    prefix = "First, we identify what is given: 12 cows."
    part1 = shadow.render(PS.continue_from(Q, prefix[:20]))
    full = shadow.render(PS.continue_from(Q, prefix))
    r1 = shadow.score(part1)
    r2 = shadow.score(full)  # incremental: only the new tokens (plus at most one at the seam) computed
    assert r2.usage.computed_prompt_tokens <= len(r2.steps) - len(r1.steps) + 2
    ref = fresh.score(full)
    assert ref.usage.computed_prompt_tokens == len(ref.steps)
    np.testing.assert_allclose([s.logprob or 0 for s in r2.steps], [s.logprob or 0 for s in ref.steps], atol=1e-4)
    # hand-over: continuing from the warm cache computes no prompt token and writes what a fresh model writes
    warm_text, _, ws = gen(shadow, PS.continue_from(Q, prefix), 20)
    assert ws.usage.computed_prompt_tokens == 0
    cold = fresh_smol()
    cold_text, _, cs = gen(cold, PS.continue_from(Q, prefix), 20)
    assert cs.usage.computed_prompt_tokens == cs.usage.prompt_tokens
    assert warm_text == cold_text


def test_tandem_pipeline_on_real_models(fresh_smol):
    llm, slm = fresh_smol(), fresh_smol()
    class Never:  # a policy that reads the features, so the SLM shadows the LLM
        name = "never"

        def sufficiency(self, f):
            return 0.0

    t = Tandem(llm, slm, policy=Never(), config=PipelineConfig(stage_budgets=(16, 32)))
    r = t.solve(Q, method="tandem", effort="low", llm_max_tokens=200, slm_max_tokens=64)
    assert r.stop_reason == "budget"
    assert 64 <= r.handover_tokens <= 64 + 32
    assert r.cost.models["slm"].prompt_tokens_computed == 0  # warm hand-over
    assert r.checkpoints[-1].features["slm_i_n"] > 0
    assert r.cost.flops_total > r.cost.flops_generated > 0
    # the budget policy needs no features: no shadow pass, the SLM reads the prefix once
    r2 = t.solve(Q, method="fixed:16", slm_max_tokens=64)
    assert r2.cost.models["slm"].scored_tokens == 0 and r2.cost.models["slm"].prompt_tokens_computed > 0


def test_continue_mode_refused_across_tokenizers(smol):
    other = ScriptedBackend("x", tokenizer_id="other")
    with pytest.raises(ConfigError):
        Tandem(smol, other).solve(Q)


def test_missing_model_file_is_a_clear_error(tmp_path):
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    with pytest.raises(ModelError, match="not found"):
        LlamaCppBackend(LlamaCppConfig(str(tmp_path / "nope.gguf")))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError):
        LlamaCppBackend(LlamaCppConfig(str(bad)))


def test_text_the_template_or_utf8_refuses_is_an_input_error(fresh_smol):
    from tandem.errors import BackendError, InputError
    from tandem.types import Message, Prompt

    b = fresh_smol()
    with pytest.raises(InputError, match="cannot be encoded as UTF-8"):
        b.stream(GenerationRequest(PS.solve("x \ud800 y"), max_tokens=2))  # a lone surrogate, as JSON allows
    with pytest.raises(InputError, match="cannot be encoded as UTF-8"):
        b.score("x \udfff")
    user_only = Prompt(messages=(Message("user", "hi"),))
    b._template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}ok"
    with pytest.raises(InputError, match="refuses this conversation: system first"):
        b.render(user_only)
    b._template = "{{ messages[0].content.nope.deeper }}"
    with pytest.raises(BackendError, match="chat template of .* failed"):
        b.render(user_only)


def test_a_run_on_a_model_given_by_path_is_not_resumed_once_the_file_changed(smol_path, tmp_path, monkeypatch):
    import os
    import shutil

    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig
    from tandem.bench.graders import get_grader
    from tandem.bench.runner import run_live
    from tandem.bench.store import RunStore
    from tandem.models import file_sha256
    from tandem.types import Problem

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))  # where the checksum records go
    own = tmp_path / "mine.gguf"
    shutil.copyfile(smol_path, own)
    problems = [Problem(id="0", question="2 + 3?", answer="5")]

    def eval_once() -> int:
        b = LlamaCppBackend(LlamaCppConfig(str(own), n_ctx=256, n_threads=2))
        try:
            t = Tandem(b, b, config=PipelineConfig(decoding=DecodingSettings(slm_max_tokens=2)))
            return run_live(problems, t, ["slm"], get_grader("gsm8k"), RunStore(tmp_path / "run"), dataset="d",
                            grader_name="gsm8k")
        finally:
            b.close()

    assert eval_once() == 1
    man = RunStore(tmp_path / "run").manifest()
    assert man["slm"]["checksum"] == man["llm"]["checksum"] == file_sha256(own)
    # the last byte of the file is tensor data: the model still loads, with other weights
    st = own.stat()
    with open(own, "r+b") as fh:
        fh.seek(st.st_size - 1)
        last = fh.read(1)
        fh.seek(st.st_size - 1)
        fh.write(bytes([last[0] ^ 0x01]))
    os.utime(own, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ConfigError, match=r"another manifest \(differs in: llm.checksum, slm.checksum\)"):
        eval_once()
