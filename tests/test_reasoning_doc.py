"""docs/reasoning.md stays true: its configuration files load with tandem's own settings loader and
its tandem command lines parse (the engines they name do not run here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from tandem.cli import app
from tandem.config import load_settings

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "reasoning.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def configs() -> dict[str, str]:
    return {b.splitlines()[0][2:].strip(): b for b in _blocks("toml") if re.match(r"# [\w.-]+\.toml\n", b)}


@pytest.mark.parametrize("name", ["paper-pair.toml", "qwq.toml", "hosted.toml"])
def test_each_configuration_loads(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(configs()[name], encoding="utf-8")
    s = load_settings(path)
    assert s.llm.kind == "openai" and s.llm.api == "chat" and s.llm.reasoning and s.llm.n_params
    assert s.pipeline.preset == "reasoning" and s.pipeline.handover == "conclude"
    assert s.pipeline.stage_budgets == (256, 512, 1024, 1536) and s.pipeline.stop_at_answer


def test_the_tandem_command_lines_parse() -> None:
    group = typer.main.get_command(app)
    lines = []
    for block in _blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["tandem"]:
                lines.append(words[1:])
    assert len(lines) >= 6
    for words in lines:
        cmd, rest = group, list(words)
        while isinstance(cmd, click.Group):
            cmd, rest = cmd.commands[rest[0]], rest[1:]  # type: ignore[attr-defined]
        assert cmd.make_context(words[0], rest).params is not None  # raises on an unknown option
