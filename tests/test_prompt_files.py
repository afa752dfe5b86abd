"""Prompt wordings from a file: no system prompt, other nudges; hashed into the runs' identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.backends.scripted import ScriptedBackend
from tandem.bench.graders import grade_gsm8k
from tandem.bench.probe import ProbeConfig
from tandem.bench.runner import run_probe
from tandem.bench.store import RunStore
from tandem.errors import ConfigError
from tandem.pipeline import PipelineConfig, Tandem
from tandem.prompts import DEFAULT_TEXTS, PROMPT_VERSION, PromptSet, load_prompt_texts
from tandem.types import Problem


def test_a_prompt_file_replaces_wordings_and_changes_the_version(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[prompts]\nsolve_system_math = false\nconclude_nudge = "\\n\\nDone thinking. Answer:"\n')
    texts = load_prompt_texts(f)
    assert texts.solve_system_math is None and texts.conclude_nudge.endswith("Answer:")
    assert DEFAULT_TEXTS.version == PROMPT_VERSION and texts.version.startswith("custom-")
    assert load_prompt_texts(f).version == texts.version  # the same wordings, the same version
    ps = PromptSet("math", texts)
    assert [m.role for m in ps.solve("q").messages] == ["user"]  # no system prompt
    assert ps.handover("q", "thought", "conclude").assistant_prefix == "thought\n\nDone thinking. Answer:"
    y = tmp_path / "p.yaml"
    y.write_text("hint_guide: 'Hints:'\n")
    assert load_prompt_texts(y).hint_guide == "Hints:"


@pytest.mark.parametrize(("body", "message"), [
    ('bogus = "x"\n', "unknown prompt key"),
    ('hint_guide = ""\n', "non-empty string"),
    ('code_template = "no placeholder"\n', "must contain {prompt}"),
    ('trial_nudge = "answer:"\n', "must end by opening a box"),
])
def test_bad_prompt_files_are_refused(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_prompt_texts(f)


def test_runs_record_the_prompt_version_and_refuse_another(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('coordinator_system = "Plan it."\n')
    texts = load_prompt_texts(f)
    llm, slm = ScriptedBackend("The answer is \\boxed{7}."), ScriptedBackend("So \\boxed{7}.")
    store = RunStore(tmp_path / "run")
    run_probe([Problem("p", "What is 3+4?", "7")], llm, slm, grade_gsm8k, store, ProbeConfig(prompts=texts),
              dataset="x/train[0:1]", grader_name="gsm8k")
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["prompt_version"] == texts.version and man["config"]["prompt_texts"] == texts.version
    with pytest.raises(ConfigError, match="another manifest"):
        run_probe([Problem("q", "What is 1+1?", "2")], llm, slm, grade_gsm8k, RunStore(tmp_path / "run"),
                  ProbeConfig(), dataset="x/train[1:2]", grader_name="gsm8k")
    t = Tandem(llm, slm, config=PipelineConfig(prompts=texts))
    assert t.solve("What is 3+4?", method="llm").settings["prompt_version"] == texts.version


def test_runs_recorded_before_later_options_still_resume(tmp_path: Path) -> None:
    llm, slm = ScriptedBackend("The answer is \\boxed{7}."), ScriptedBackend("So \\boxed{7}.")
    run_probe([Problem("p", "What is 3+4?", "7")], llm, slm, grade_gsm8k, RunStore(tmp_path / "run"),
              ProbeConfig(), dataset="x/train[0:1]", grader_name="gsm8k")
    m = tmp_path / "run" / "manifest.json"
    man = json.loads(m.read_text())
    dec = man["config"]["decoding"]
    del man["config"]["trial_tokens"], dec["stop_at_answer"], dec["sampling"]  # as older runs wrote it
    del man["concurrency"]
    m.write_text(json.dumps(man))
    assert run_probe([Problem("q", "What is 1+1?", "2")], llm, slm, grade_gsm8k, RunStore(tmp_path / "run"),
                     ProbeConfig(), dataset="x/train[1:2]", grader_name="gsm8k") == 1
