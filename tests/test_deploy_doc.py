"""docs/deploy.md stays true: its config example loads and builds, its tandem command lines parse, and
(with the vLLM environment) its vLLM command lines are accepted by vLLM's own argument parser.

The commands that can run here run elsewhere: tests/test_vllm.py serves SmolLM2 with vLLM, runs
`tandem solve` with the --llm-base-url/--slm-base-url flags and `tandem serve` with the guide's config
file pointed at that server."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from tandem.cli import app
from tandem.config import load_settings

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "deploy.md"
KEY_VARS = ("TANDEM_LLM_KEY", "TANDEM_SLM_KEY", "TANDEM_API_KEYS")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def guide_commands(program: str) -> list[list[str]]:
    """Command lines in the guide's bash blocks (continuations joined, comments dropped) whose words
    start with `program` (a string of one or more words)."""
    head = program.split()
    out = []
    for block in _blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[: len(head)] == head:
                out.append(words[len(head):])
    return out


def test_the_config_example_loads_and_builds_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = [b for b in _blocks("toml") if b.startswith("# tandem.toml")]
    assert len(examples) == 1
    path = tmp_path / "tandem.toml"
    path.write_text(examples[0], encoding="utf-8")
    s = load_settings(path)
    assert s.llm.kind == s.slm.kind == "openai"
    assert s.llm.n_params and s.slm.n_params and s.slm.n_params < s.llm.n_params
    assert (s.llm.tokenizer_id, s.llm.chat_template_id) == (s.slm.tokenizer_id, s.slm.chat_template_id)
    assert s.pipeline.handover == "continue" and s.server.api_key_env == "TANDEM_API_KEYS"
    assert s.slm.top_logprobs <= 20  # the guide's --max-logprobs

    from tandem.factory import build_tandem

    for var in KEY_VARS:
        monkeypatch.setenv(var, "k")
    t = build_tandem(s)  # creates the HTTP clients; sends nothing
    try:
        assert t.llm.info.name == "qwen2.5-32b" and t.slm.info.capabilities.score
        assert t.llm.info.capabilities.entropy == "topk"
    finally:
        t.llm.close()
        t.slm.close()


def test_the_guides_tandem_command_lines_parse() -> None:
    group = typer.main.get_command(app)
    commands = guide_commands("tandem")
    assert {c[0] for c in commands} >= {"solve", "serve"}
    for words in commands:
        sub = group.commands[words[0]]  # type: ignore[attr-defined]
        ctx = sub.make_context(words[0], list(words[1:]))  # raises on an unknown option
        assert ctx.params is not None
    flags = {w for c in commands for w in c if w.startswith("--")}
    assert {"--llm-base-url", "--slm-base-url", "--llm-params", "--slm-params", "--config"} <= flags


def test_the_guides_vllm_flags_include_what_the_tests_rely_on() -> None:
    from vllm_server import FEATURE_ARGS

    needed = {a for a in FEATURE_ARGS if a.startswith("--") and a != "--enable-log-requests"}
    for words in guide_commands("python -m vllm.entrypoints.openai.api_server"):
        assert needed <= set(words), words


@pytest.mark.vllm
def test_the_guides_vllm_command_lines_parse_with_vllm() -> None:
    from vllm_server import need_vllm, server_env, vllm_python

    py = vllm_python(build=os.environ.get("TANDEM_VLLM") == "1")
    need_vllm(py is not None, "no vLLM environment (.venv-vllm): set TANDEM_VLLM=1 to build it (scripts/vllm_env.sh)")
    assert py is not None
    commands = guide_commands("python -m vllm.entrypoints.openai.api_server")
    assert len(commands) >= 3
    check = (
        "import json, sys\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "for words in json.loads(sys.argv[1]):\n"
        "    args = make_arg_parser(FlexibleArgumentParser()).parse_args(words)\n"
        "    validate_parsed_serve_args(args)\n"
        "    print(args.served_model_name[0], args.tensor_parallel_size, args.pipeline_parallel_size)\n"
    )
    import json

    out = subprocess.run([str(py), "-c", check, json.dumps(commands)], capture_output=True, text=True,
                         timeout=300, env={**server_env(), "CUDA_VISIBLE_DEVICES": ""}, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split()
    assert "qwen2.5-32b" in lines and "qwen2.5-72b" in lines
