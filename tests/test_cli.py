"""The command line on bad input: one clear error line, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPTED = """
[llm]
kind = "scripted"
model = "big"
reply = "Step one. Step two. Step three. The answer is \\\\boxed{7}."
[slm]
kind = "scripted"
model = "small"
reply = " The answer is \\\\boxed{7}."
[pipeline]
stage_budgets = [2, 4]
"""


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "tandem.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def assert_clean_error(res, *needles: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    text = " ".join(res.stderr.split())
    assert "error" in text.lower()
    for n in needles:
        assert n in text, text


@pytest.fixture
def scripted_config(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SCRIPTED)
    return p


def test_solve_with_scripted_backends_json(scripted_config):
    res = run("solve", "--config", str(scripted_config), "--json", "What is 3 + 4?")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["answer"]["answer"] == "7" and d["stop_reason"] in ("budget", "llm_finished")
    assert d["cost"]["flops_total"] > 0


def test_solve_reads_stdin_and_files(scripted_config, tmp_path):
    res = run("solve", "--config", str(scripted_config), "--json", stdin="What is 3 + 4?")
    assert res.returncode == 0 and json.loads(res.stdout)["question"] == "What is 3 + 4?"
    q = tmp_path / "q.txt"
    q.write_text("What is 3 + 4?")
    res = run("solve", "--config", str(scripted_config), "--json", "--file", str(q), "--compare")
    assert res.returncode == 0 and set(json.loads(res.stdout)) == {"tandem", "llm"}


def test_human_output_shows_checkpoints_and_cost_table(scripted_config):
    res = run("solve", "--config", str(scripted_config), "What is 3 + 4?")
    assert res.returncode == 0, res.stderr
    assert "checkpoint 0" in res.stdout and "TFLOPs" in res.stdout and "answer:" in res.stdout


def test_empty_question(scripted_config):
    assert_clean_error(run("solve", "--config", str(scripted_config), "   "), "empty")


def test_unknown_model_name():
    assert_clean_error(run("solve", "--llm-model", "no-such-model", "q"), "unknown model 'no-such-model'")


def test_missing_model_file(tmp_path):
    assert_clean_error(run("solve", "--slm-model", str(tmp_path / "missing.gguf"), "q"), "missing.gguf")


def test_invalid_config_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[pipeline]\neffort = "medium"\nspeed = 3\n')
    assert_clean_error(run("solve", "--config", str(p), "q"), "pipeline.speed: unknown key")


def test_invalid_option_value(scripted_config):
    assert_clean_error(run("solve", "--config", str(scripted_config), "--effort", "extreme", "q"), "effort")


def test_unreachable_endpoint(scripted_config):
    res = run("solve", "--config", str(scripted_config), "--llm-base-url", "http://127.0.0.1:9/v1",
              "--llm-model", "m", "--llm-params", "1000", "--handover", "hint", "q")
    assert_clean_error(res, "127.0.0.1:9")


def test_wrong_checksum(tmp_path):
    from tandem.models import DEFAULT_MODELS

    spec = DEFAULT_MODELS["smollm2-135m"]
    models = tmp_path / "models"
    models.mkdir()
    (models / spec.filename).write_bytes(b"GGUF" + b"\0" * 100)
    res = run("solve", "--models-dir", str(models), "--llm-model", "smollm2-135m", "--slm-model", "smollm2-135m",
              "q")
    assert_clean_error(res, "smollm2-135m")


def test_version():
    from tandem import __version__

    res = run("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"tandem {__version__}"


def test_unknown_command_is_a_usage_error():
    res = run("fly")
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_eval_on_local_files_through_the_hub_loader_with_mapped_fields(scripted_config, tmp_path):
    pytest.importorskip("datasets")
    rows = [{"qid": "a", "problem": "What is 3 + 4?", "final": "7"}, {"qid": "b", "problem": "2 + 5?", "final": "7"}]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "run"
    res = run("eval", "hf:json", "--hf-data-files", str(data), "--fields", "id=qid,question=problem,answer=final",
              "--grader", "gsm8k", "--config", str(scripted_config), "--methods", "slm,llm", "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["grader"] == "gsm8k" and man["problem_ids"] == ["a", "b"]
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["correct"] for r in recs)
    assert_clean_error(run("eval", "hf:json", "--hf-data-files", str(data), "--fields", "question",
                           "--config", str(scripted_config), "--out", str(tmp_path / "x"), env=env), "--fields")
    assert_clean_error(run("eval", "gsm8k", "--fields", "question=problem", "--config", str(scripted_config),
                           "--out", str(tmp_path / "y"), env=env), "only apply to hf:")
    assert_clean_error(run("eval", "hf:json", "--hf-data-files", str(data), "--grader", "nope",
                           "--config", str(scripted_config), "--out", str(tmp_path / "z"), env=env), "--grader")


def test_solve_says_when_the_effort_runs_as_the_llm_alone(scripted_config, tmp_path):
    from test_classifier import good_doc, models_block

    doc = good_doc()
    doc["models"] = models_block("big", "small")
    doc["efforts"]["medium"].update(threshold=1.01, stage_thresholds={}, finish=True)  # calibrated: never hand over
    clf = tmp_path / "pair.json"
    clf.write_text(json.dumps(doc))
    res = run("solve", "--config", str(scripted_config), "--classifier", str(clf), "What is 3 + 4?")
    assert res.returncode == 0, res.stderr
    assert "stop: llm_finished" in res.stdout
    note = " ".join(res.stderr.split())
    assert "effort medium runs as the LLM alone" in note and "--effort low" in note
    res = run("solve", "--config", str(scripted_config), "--classifier", str(clf), "--effort", "low", "q: 3 + 4?")
    assert res.returncode == 0 and "runs as the LLM alone" not in res.stderr


def assert_one_line_error(res, *needles: str) -> None:
    """Exit 2, no traceback, and exactly one line on stderr holding each needle as it is."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_errors_are_one_line_and_shown_as_they_are(scripted_config, tmp_path):
    odd = tmp_path / "[bold]x[/]" / ("long-" * 30 + ".txt")  # markup-like and longer than a terminal line
    assert_one_line_error(run("solve", "--config", str(scripted_config), "-f", str(odd)), str(odd))


def test_models_verify_full_hashes_again(tmp_path):
    from tandem.models import DEFAULT_MODELS

    spec = DEFAULT_MODELS["smollm2-135m"]
    models = tmp_path / "models"
    models.mkdir()
    f = models / spec.filename
    f.write_bytes(b"GGUF" + b"\0" * 100)
    st = f.stat()  # a sidecar that vouches for the file as it is now, as a forged or stale one would
    (models / (spec.filename + ".json")).write_text(json.dumps(
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "sha256": spec.sha256}))
    res = run("models", "verify", "--models-dir", str(models))
    assert res.returncode == 0 and res.stdout.split()[:2] == ["ok", "smollm2-135m"], res.stdout + res.stderr
    res = run("models", "verify", "--full", "--models-dir", str(models))
    assert "mismatch  smollm2-135m" in res.stdout
    assert_one_line_error(res, "smollm2-135m (sha256 mismatch)", "tandem models pull --force")
    assert_one_line_error(run("models", "verify", "qwen2.5-coder-0.5b", "--models-dir", str(models)),
                          "qwen2.5-coder-0.5b (not installed)")
    res = run("models", "verify", "--models-dir", str(tmp_path / "empty"))
    assert res.returncode == 0 and "no model is installed" in res.stdout


def test_text_that_is_not_utf8_is_refused_in_one_line(scripted_config, tmp_path):
    q = tmp_path / "q.txt"
    q.write_bytes(b"What is 3 + 4?\xff\xfe")
    assert_one_line_error(run("solve", "--config", str(scripted_config), "-f", str(q)), "q.txt", "not UTF-8")
    res = subprocess.run([sys.executable, "-m", "tandem.cli", "solve", "--config", str(scripted_config)],
                         input=b"\xc3(", capture_output=True, timeout=120)
    assert_one_line_error(subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(),
                                                      res.stderr.decode()), "stdin", "not UTF-8")
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes(SCRIPTED.replace('"big"', '"gro\xdf"').encode("latin-1"))
    assert_one_line_error(run("solve", "--config", str(cfg), "q"), "latin1.toml", "not UTF-8")
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffWhat is 3 + 4?".encode())  # a byte-order mark is no part of the question
    res = run("solve", "--config", str(scripted_config), "--json", "-f", str(bom))
    assert res.returncode == 0 and json.loads(res.stdout)["question"] == "What is 3 + 4?"


def test_question_files_directories_pipes_and_devices(scripted_config, tmp_path):
    assert_one_line_error(run("solve", "--config", str(scripted_config), "-f", str(tmp_path)), "is a directory")
    assert_one_line_error(run("solve", "--config", str(scripted_config), "-f", str(tmp_path / "no.txt")),
                          "question file not found")
    assert_one_line_error(run("solve", "--config", str(scripted_config), "-f", "/dev/zero"), "larger than 16 MiB")
    assert_one_line_error(run("solve", "--config", str(tmp_path), "q"), "is a directory")
    r, w = os.pipe()  # -f <(echo ...) hands over a pipe
    os.write(w, b"What is 3 + 4?\n")
    os.close(w)
    try:
        res = subprocess.run([sys.executable, "-m", "tandem.cli", "solve", "--config", str(scripted_config),
                              "--json", "-f", f"/dev/fd/{r}"], pass_fds=(r,), capture_output=True, text=True,
                             timeout=120)
    finally:
        os.close(r)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["question"] == "What is 3 + 4?\n"


def test_a_malformed_endpoint_url_is_a_configuration_error(scripted_config):
    for url, needle in (("http://[::1", "not a valid URL"), ("http://h:99999/v1", "not a valid URL"),
                        ("localhost:8000", "http(s) URL with a host"), ("http:///v1", "http(s) URL with a host")):
        res = run("solve", "--config", str(scripted_config), "--llm-base-url", url, "--llm-model", "m",
                  "--llm-params", "1000", "q")
        assert_one_line_error(res, "llm.base_url", needle)


def test_a_negative_fixed_budget_is_refused(scripted_config):
    assert_one_line_error(run("solve", "--config", str(scripted_config), "--mode", "fixed:-5", "q"),
                          "fixed:-5", "at least 0")
    res = run("solve", "--config", str(scripted_config), "--mode", "fixed:0", "--json", "What is 3 + 4?")
    assert res.returncode == 0 and json.loads(res.stdout)["method"] == "fixed:0", res.stderr  # the SLM at once


@pytest.mark.parametrize("budgets", ["[-5, 64]", "[0]", "[]"])
def test_stage_budgets_must_be_positive(tmp_path, budgets):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SCRIPTED.replace("stage_budgets = [2, 4]", f"stage_budgets = {budgets}"))
    assert_one_line_error(run("solve", "--config", str(cfg), "q"), "pipeline.stage_budgets")


def test_stage_budgets_are_ordered_once_each():
    from tandem.config import load_settings

    assert load_settings(None, {"pipeline": {"stage_budgets": [64, 8, 64]}}).pipeline.stage_budgets == (8, 64)
