"""Sampling values per role: what a request resolves to, the HTTP body an endpoint receives, what
llama.cpp's `generate` receives, and (SmolLM2) that seeds and top-k reach the embedded engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servers import answer_sse, misbehaving_upstream
from tandem.backends import build_backend
from tandem.backends._llama_adapter import LlamaAdapter
from tandem.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
from tandem.backends.sampling import Sampling
from tandem.bench.runner import model_identity
from tandem.config import BackendSettings, load_settings
from tandem.errors import ConfigError
from tandem.types import GenerationRequest, Message, Prompt, Usage

PROMPT = Prompt((Message("user", "Name three colours."),))
TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
ROLE = dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0.05, presence_penalty=0.5, frequency_penalty=0.25,
            repetition_penalty=1.1, seed=100, stop=["###"])


def test_a_roles_values_win_its_seed_adds_and_its_stops_join() -> None:
    role = Sampling(temperature=0.6, seed=100, stop=("###",))
    s = role.resolve(GenerationRequest(PROMPT, temperature=0.0, seed=3, stop=("\n\n",)))
    assert (s.temperature, s.seed, s.stop) == (0.6, 103, ("\n\n", "###"))
    s = Sampling().resolve(GenerationRequest(PROMPT, temperature=0.8, seed=3))  # nothing fixed: the request's
    assert (s.temperature, s.seed, s.stop, s.top_p) == (0.8, 3, (), None)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(top_p=0.0), "top_p"), (dict(temperature=3.0), "temperature"), (dict(repetition_penalty=0.0), "repetition"),
    (dict(extra_body={"max_tokens": 9}), "cannot set max_tokens"), (dict(stop=("",)), "stop"),
])
def test_bad_values_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Sampling(**kw)


def test_settings_carry_the_values_and_refuse_them_where_they_cannot_apply() -> None:
    st = load_settings(None, {"llm": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                                      "n_params": 10, **ROLE, "extra_body": {"top_k": 40}}})
    s = Sampling.from_settings(st.llm)
    assert s.top_k == 20 and s.stop == ("###",) and s.extra_body == {"top_k": 40}
    assert Sampling.from_settings(st.slm) == Sampling()  # the other role: nothing fixed
    dumped = load_settings(None, {"llm": {"kind": "recorded", "model": "x.jsonl"}}).model_dump()
    assert load_settings(None, {**dumped, "classifier": "budget"}).llm.kind == "recorded"  # every key, all unset
    with pytest.raises(ConfigError, match="recording is one draw"):
        load_settings(None, {"llm": {"kind": "recorded", "model": "x.jsonl", "temperature": 0.5}})
    with pytest.raises(ConfigError, match="extra_body"):
        load_settings(None, {"slm": {"model": "qwen2.5-coder-0.5b", "extra_body": {"a": 1}}})
    with pytest.raises(ConfigError, match="top_p"):
        load_settings(None, {"slm": {"model": "qwen2.5-coder-0.5b", "top_p": 1.5}})


# ---- HTTP ---------------------------------------------------------------------------------------------------
def _http_backend(base_url: str, api: str = "completions", **sampling: Any) -> OpenAIBackend:
    return OpenAIBackend(OpenAIBackendConfig(
        base_url=base_url, model="m", n_params=10, api=api, chat_template=TEMPLATE, max_retries=0,
        count_prompt_tokens=False, extra_body={"repeat_penalty": 1.0}, sampling=sampling))


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_an_endpoint_receives_the_roles_sampling_values_extra_body_last(api: str) -> None:
    with misbehaving_upstream(answer_sse(["red", " blue"])) as up:
        b = _http_backend(up.base_url, api, **ROLE, extra_body={"top_k": 40, "chat_template_kwargs": {"x": 1}})
        with b:
            list(b.stream(GenerationRequest(PROMPT, max_tokens=8, temperature=0.0, seed=7, stop=("\n",))))
        body = up.requests[0].json()
    assert up.requests[0].path == f"/v1/{'chat/completions' if api == 'chat' else 'completions'}"
    assert body["temperature"] == 0.6 and body["seed"] == 107 and body["stop"] == ["\n", "###"]
    assert (body["top_p"], body["min_p"], body["presence_penalty"], body["frequency_penalty"],
            body["repetition_penalty"]) == (0.95, 0.05, 0.5, 0.25, 1.1)
    assert body["top_k"] == 40 and body["chat_template_kwargs"] == {"x": 1}  # extra_body merged last
    assert body["repeat_penalty"] == 1.0 and body["max_tokens"] == 8 and body["stream"] is True
    assert body["model"] == "m"


def test_without_role_values_the_body_is_as_before() -> None:
    with misbehaving_upstream(answer_sse(["red"])) as up:
        with _http_backend(up.base_url) as b:
            list(b.stream(GenerationRequest(PROMPT, max_tokens=8, temperature=0.0, seed=7)))
        body = up.requests[0].json()
    for key in ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "stop"):
        assert key not in body
    assert body["temperature"] == 0.0 and body["seed"] == 7


def test_a_runs_manifest_names_the_roles_values_only_when_set() -> None:
    settings = BackendSettings(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", n_params=10,
                               temperature=0.6, seed=5)
    b = build_backend(settings)
    try:
        assert b.info.sampling == {"temperature": 0.6, "seed": 5}
        assert model_identity(b)["sampling"] == {"temperature": 0.6, "seed": 5}
    finally:
        b.close()
    plain = build_backend(BackendSettings(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", n_params=10))
    try:
        assert "sampling" not in model_identity(plain)  # runs recorded before keep their identity
    finally:
        plain.close()


# ---- llama.cpp ----------------------------------------------------------------------------------------------
class FakeLlama:
    """Just enough of `llama_cpp.Llama` for `LlamaAdapter.generate`: records what `generate` gets."""

    def __init__(self) -> None:
        import numpy as np

        self.input_ids = np.zeros(64, dtype=np.intc)
        self.n_tokens = 0
        self.calls: list[dict[str, Any]] = []
        self.seeds: list[int] = []

    def n_ctx(self) -> int:
        return 64

    def eval(self, tokens: Any) -> None:
        pass

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def generate(self, tokens: Any, **kw: Any) -> Any:
        self.calls.append(kw)
        yield from ()


def test_llamacpp_generate_receives_the_values() -> None:
    fake = FakeLlama()
    adapter = LlamaAdapter(fake)
    list(adapter.generate([1, 2], Usage(), max_tokens=4, temperature=0.7, seed=9, top_p=0.9, top_k=12, min_p=0.1,
                          repeat_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2))
    kw = fake.calls[-1]
    assert (kw["temp"], kw["top_p"], kw["top_k"], kw["min_p"], kw["repeat_penalty"], kw["presence_penalty"],
            kw["frequency_penalty"]) == (0.7, 0.9, 12, 0.1, 1.3, 0.4, 0.2)
    assert fake.seeds == [9]
    list(adapter.generate([1, 2], Usage(), max_tokens=4, temperature=0.0, seed=9))  # unset: as before
    kw = fake.calls[-1]
    assert (kw["temp"], kw["top_p"], kw["top_k"], kw["min_p"], kw["repeat_penalty"], kw["presence_penalty"],
            kw["frequency_penalty"]) == (0.0, 1.0, 40, 0.0, 1.0, 0.0, 0.0)


def test_llamacpp_refuses_extra_body() -> None:
    from tandem.backends.llamacpp import LlamaCppConfig

    with pytest.raises(ConfigError, match="extra_body"):
        LlamaCppConfig("x.gguf", sampling=Sampling(extra_body={"a": 1}))


@pytest.fixture(scope="module")
def smol_sampler(smol_path: Path) -> Any:
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    def make(**role: Any) -> LlamaCppBackend:
        # one thread: beside other busy processes, two llama.cpp threads wait on each other (~50x slower)
        return LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=512, n_threads=1, sampling=Sampling(**role)))

    made: list[LlamaCppBackend] = []
    yield lambda **role: made.append(make(**role)) or made[-1]
    for b in made:
        b.close()


def _text(b: Any, n: int = 12, **req: Any) -> str:
    return "".join(s.text for s in b.stream(GenerationRequest(PROMPT, max_tokens=n, **req)))


@pytest.mark.real
def test_smollm2_same_seed_same_text_other_seeds_other_text(smol_sampler: Any) -> None:
    b = smol_sampler(temperature=0.8)
    first = _text(b, seed=1)
    assert _text(b, seed=1) == first
    assert len({first, _text(b, seed=2), _text(b, seed=3)}) > 1
    assert b.info.sampling == {"temperature": 0.8}
    assert _text(smol_sampler(temperature=0.8, seed=1), seed=0) == first  # the role's seed adds to the run's


@pytest.mark.real
def test_smollm2_top_k_and_penalties_reach_the_engine(smol_sampler: Any) -> None:
    greedy = _text(smol_sampler(), 32)
    assert _text(smol_sampler(temperature=0.8, top_k=1), 32, seed=5) == greedy  # top-k 1 samples the argmax
    # penalties act on the tokens generated so far, at temperature 0 too
    assert _text(smol_sampler(repetition_penalty=1.5), 32) != greedy
    assert _text(smol_sampler(frequency_penalty=1.5), 32) != greedy


# ---- the command line -------------------------------------------------------------------------------------------
def test_sampling_options_parse_numbers_stops_and_extras() -> None:
    from tandem.bench.commands import sampling_opt

    got = sampling_opt(r"temperature=0.6,top_k=20,seed=3,stop=###,stop=\n\n,extra.top_a=0.5,extra.mode=fast",
                       "--llm-sampling")
    assert got == {"temperature": 0.6, "top_k": 20, "seed": 3, "stop": ["###", "\n\n"],
                   "extra_body": {"top_a": 0.5, "mode": "fast"}}
    assert sampling_opt(None, "--llm-sampling") == {}
    for bad, message in [("temprature=0.5", "unknown sampling key 'temprature'"), ("top_p", "KEY=VALUE"),
                         ("top_p=high", "top_p takes a number")]:
        with pytest.raises(ConfigError, match=message):
            sampling_opt(bad, "--slm-sampling")


def test_sampling_options_reach_each_roles_settings(tmp_path: Path) -> None:
    from tandem.bench.commands import _settings

    st = _settings(None, None, None, llm_sampling="temperature=0.6,top_p=0.95", slm_sampling="seed=4")
    assert (st.llm.model, st.llm.temperature, st.llm.top_p) == ("qwen2.5-coder-1.5b", 0.6, 0.95)
    assert (st.slm.model, st.slm.seed, st.slm.temperature) == ("qwen2.5-coder-0.5b", 4, None)
    cfg = tmp_path / "t.toml"
    cfg.write_text('[llm]\nmodel = "smollm2-135m"\ntop_k = 5\n')
    st = _settings(cfg, None, None, llm_sampling="min_p=0.1")
    assert (st.llm.model, st.llm.top_k, st.llm.min_p) == ("smollm2-135m", 5, 0.1)
    with pytest.raises(ConfigError, match="recording is one draw"):
        _settings(None, None, None, llm_recording=tmp_path / "r.jsonl", llm_sampling="temperature=0.5")


def test_solve_sends_the_llm_sampling_values_to_its_endpoint(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    with misbehaving_upstream(answer_sse(["7"])) as up:
        cfg = tmp_path / "t.toml"
        cfg.write_text(f'[llm]\nkind = "openai"\nmodel = "big"\nbase_url = "{up.base_url}"\nn_params = 10\n'
                       'api = "chat"\nmax_retries = 0\n[slm]\nkind = "scripted"\nmodel = "small"\n')
        out = subprocess.run([sys.executable, "-m", "tandem.cli", "solve", "--config", str(cfg), "--mode", "llm",
                              "--json", "--llm-sampling", "temperature=0.7,top_k=5,extra.top_a=0.2", "What is 3+4?"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        body = next(r.json() for r in up.requests if r.path.endswith("/chat/completions"))
    assert (body["temperature"], body["top_k"], body["top_a"]) == (0.7, 5, 0.2)
    assert json.loads(out.stdout)["method"] == "llm"
