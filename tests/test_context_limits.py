"""A prompt longer than the model's context, with SmolLM2-135M at a 256-token context: refused as an
input error before llama.cpp sees it, at the backend, so that the CLI prints one line (exit 2), the
server answers 400, an eval records one error and goes on, and the model stays usable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tandem import DecodingSettings, GenerationRequest, PipelineConfig, Tandem
from tandem.bench.graders import get_grader
from tandem.bench.runner import run_live
from tandem.bench.store import RunStore, read_records
from tandem.config import TandemSettings
from tandem.errors import ContextOverflow, InputError
from tandem.prompts import PromptSet
from tandem.types import Message, Problem, Prompt

pytestmark = pytest.mark.real

N_CTX = 256
LONG = "Count the apples. " * 40_000  # ~700 KB
PS = PromptSet("math")


def small(path: Path, name: str = "smol") -> Any:
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    return LlamaCppBackend(LlamaCppConfig(str(path), name=name, n_ctx=N_CTX, n_threads=1))


@pytest.fixture
def pair(smol_path: Path):
    llm, slm = small(smol_path, "big"), small(smol_path, "small")
    yield llm, slm
    llm.close()
    slm.close()


def test_the_backend_refuses_what_does_not_fit_and_stays_usable(pair):
    b = pair[0]
    with pytest.raises(ContextOverflow, match=f"context of {N_CTX} tokens") as exc:
        b.stream(GenerationRequest(PS.solve(LONG), max_tokens=4))  # refused before the stream starts
    assert isinstance(exc.value, InputError)
    with pytest.raises(ContextOverflow):
        b.score(LONG)
    many = Prompt(messages=tuple(Message("user", "hi") for _ in range(2_000)))
    with pytest.raises(ContextOverflow):
        b.stream(GenerationRequest(many, max_tokens=4))
    # the model is unaffected by what it refused
    steps = list(b.stream(GenerationRequest(PS.solve("What is 2 + 3?"), max_tokens=4)))
    assert len(steps) == 4


def test_at_the_edge_of_the_context(smol_path):
    from tandem.backends.llamacpp import LlamaCppBackend, LlamaCppConfig

    n = 100  # llama.cpp pads its context to 256 and says so; the positions past 100 do not exist
    b = LlamaCppBackend(LlamaCppConfig(str(smol_path), n_ctx=n, n_threads=1))
    try:
        assert b.info.n_ctx == n
        ids = b.tokenize("one " * 200)[:n]
        text = b.adapter.llama.detokenize(ids).decode("utf-8")
        assert len(b.tokenize(text)) == n
        assert len(b.score(text).steps) == n  # a text of exactly the context scores
        with pytest.raises(ContextOverflow, match=f"context of {n} tokens"):
            b.score(text + " one")
        # a prompt that leaves one position generates one token; one that leaves none is refused
        room = n - len(b.tokenize(b.render(PS.solve("x"))))
        fits = PS.solve("x" + " x" * (room - 1))
        assert len(b.tokenize(b.render(fits))) == n - 1
        assert len(list(b.stream(GenerationRequest(fits, max_tokens=8)))) <= 1
        with pytest.raises(ContextOverflow, match="room for an answer"):
            b.stream(GenerationRequest(PS.solve("x" + " x" * room), max_tokens=8))
    finally:
        b.close()


def test_an_eval_records_the_overflow_and_goes_on(pair, tmp_path):
    t = Tandem(*pair, config=PipelineConfig(stage_budgets=(4,), max_unit_tokens=4,
                                            decoding=DecodingSettings(llm_max_tokens=8, slm_max_tokens=8)))
    problems = [Problem(id="long", question=LONG, answer="1"), Problem(id="short", question="2 + 3?", answer="5")]
    added = run_live(problems, t, ["slm", "tandem"], get_grader("gsm8k"), RunStore(tmp_path / "r"), dataset="d",
                     grader_name="gsm8k")
    assert added == 4
    recs = {r["key"]: r for r in read_records(tmp_path / "r")}
    for m in ("slm", "tandem"):
        assert recs[f"long|{m}"]["error"].startswith("ContextOverflow: ")
        short = recs[f"short|{m}"]
        assert short["error"] is None and short["llm_generated_tokens"] + short["slm_generated_tokens"] > 0


def test_the_cli_says_so_in_one_line(smol_path, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[llm]\nmodel = "{smol_path}"\nn_ctx = {N_CTX}\nn_threads = 1\n'
                   f'[slm]\nmodel = "{smol_path}"\nn_ctx = {N_CTX}\nn_threads = 1\n'
                   "[pipeline]\nllm_max_tokens = 8\nslm_max_tokens = 8\nstage_budgets = [4]\n")
    q = tmp_path / "q.txt"
    q.write_text(LONG)
    for mode in ("slm", "tandem", "llm"):
        res = subprocess.run([sys.executable, "-m", "tandem.cli", "solve", "-c", str(cfg), "-f", str(q),
                              "--mode", mode, "--json"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TANDEM_HOME": str(tmp_path / "home")})
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f"context of {N_CTX} tokens" in lines[0], res.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_server_answers_400(pair, anyio_backend):
    from tandem.server import create_app

    t = Tandem(*pair, config=PipelineConfig(decoding=DecodingSettings(llm_max_tokens=8, slm_max_tokens=8)))
    app = create_app(TandemSettings(), tandem=t)
    long_msgs = [{"role": "user", "content": LONG[:600_000]}]
    many_msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(10_001)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as c:
        for model, msgs, stream in (("slm", long_msgs, False), ("tandem", long_msgs, True),
                                    ("llm", many_msgs, False), ("tandem", many_msgs, False)):
            r = await c.post("/v1/chat/completions", json={"model": model, "messages": msgs, "stream": stream})
            assert r.status_code == 400, (model, len(msgs), r.text[:300])
            err = r.json()["error"]
            assert err["code"] == "invalid_request" and f"context of {N_CTX} tokens" in err["message"]
        ok = await c.post("/v1/chat/completions", json={"model": "slm", "max_tokens": 4,
                                                        "messages": [{"role": "user", "content": "2 + 3?"}]})
        assert ok.status_code == 200, ok.text
