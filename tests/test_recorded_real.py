"""The recorded backend against real models: a recording the project makes itself with SmolLM2 probes
exactly as the live model does, and the embedded Qwen tokenizer counts the shared recordings as their
README states."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from tandem.backends.recorded import RecordedBackend, RecordedConfig
from tandem.backends.tokenizers import GGUFTokenizer
from tandem.bench.graders import grade_gsm8k
from tandem.bench.probe import ProbeConfig, Prober
from tandem.bench.replay import PairParams, replay
from tandem.pipeline import DecodingSettings
from tandem.prompts import PromptSet
from tandem.types import GenerationRequest, Problem

pytestmark = pytest.mark.real

PROBLEMS = [
    Problem("r1", "Tom has 3 apples and buys 4 more. How many apples does he have now?", "7"),
    Problem("r2", "A box holds 6 eggs. How many eggs are in 5 boxes?", "30"),
    Problem("r3", "Sara reads 12 pages a day. How many pages does she read in a week?", "84"),
]
CFG = ProbeConfig(stage_budgets=(8, 16, 32), decoding=DecodingSettings(llm_max_tokens=48, slm_max_tokens=24))


def test_recorded_probe_equals_the_live_probe(fresh_smol, smol_path: Path, tmp_path: Path) -> None:
    live_llm = fresh_smol()
    rows = []
    for p in PROBLEMS:  # record what the live model writes, as a user would log it
        live_llm.reset_cache()
        with live_llm.stream(GenerationRequest(PromptSet("math").solve(p.question), max_tokens=48)) as s:
            steps = list(s)
        rows.append({"id": p.id, "question": p.question, "output": "".join(x.text for x in steps),
                     "token_ids": [x.token_id for x in steps], "prompt_tokens": s.usage.prompt_tokens,
                     "finish_reason": s.finish_reason,
                     "starts_in_thought": False, "model": "smollm2-135m", "params_total": live_llm.info.n_params})
    path = tmp_path / "smol.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recorded = RecordedBackend(RecordedConfig(str(path)), GGUFTokenizer(smol_path))
    assert not recorded.info.thinks

    live = Prober(live_llm, fresh_smol(), grade_gsm8k, CFG)
    rec = Prober(recorded, fresh_smol(), grade_gsm8k, CFG)
    p_live = PairParams(live_llm.info.n_params, live_llm.info.n_params)
    p_rec = PairParams(recorded.info.n_params, live_llm.info.n_params)
    for p in PROBLEMS:
        a, b = live.probe(p), rec.probe(p)
        assert b["llm"]["text"] is None and a["llm"]["text"]  # the recording's text is not stored
        for k in ("generated", "prompt_tokens", "finish"):
            assert a["llm"][k] == b["llm"][k], (p.id, k)
        assert a["llm"]["grade"] == b["llm"]["grade"]
        assert [c["llm_tokens"] for c in a["checkpoints"]] == [c["llm_tokens"] for c in b["checkpoints"]]
        assert [c["stage"] for c in a["checkpoints"]] == [c["stage"] for c in b["checkpoints"]]
        for ca, cb in zip(a["checkpoints"], b["checkpoints"], strict=True):
            assert ca["slm"]["text"] == cb["slm"]["text"] and ca["slm"]["generated"] == cb["slm"]["generated"]
            assert ca["score_tokens_live"] == cb["score_tokens_live"]
        for method in ("llm", "fixed:8", "fixed:16", "fixed:32", "oracle"):
            ra, rb = replay(a, method, p_live), replay(b, method, p_rec)
            assert (ra.correct, ra.flops_total, ra.flops_generated) == (rb.correct, rb.flops_total, rb.flops_generated)
        from tandem.features import FEATURE_GROUPS

        assert set(a["checkpoints"][0]["features"]) - set(b["checkpoints"][0]["features"]) == set(
            FEATURE_GROUPS["llm_stream"])  # the recording has no log-probs: absent, not zero


def test_the_qwen_tokenizer_counts_the_recordings_as_their_readme_says(data_dir: Path,
                                                                      qwen_tokenizer_path: Path) -> None:
    tok = GGUFTokenizer(qwen_tokenizer_path)
    traces = data_dir / "traces"
    assert traces.is_dir(), f"no recordings at {traces}"
    medians = {}
    for name in ("qwq-32b_gsm8k-test", "r1-distill-qwen-32b_gsm8k-test"):
        outputs = [json.loads(line)["output"] for line in (traces / f"{name}.jsonl").read_text().splitlines()]
        ids = [tok.encode(o) for o in outputs]
        medians[name] = statistics.median_low(len(i) for i in ids)
        for o, i in list(zip(outputs, ids, strict=True))[:20]:
            assert "".join(tok.pieces(i)) == o  # the pieces give the text back, character for character
    assert medians == {"qwq-32b_gsm8k-test": 1551, "r1-distill-qwen-32b_gsm8k-test": 438}


def test_the_recorded_qwq_pair_gets_its_shipped_classifier(data_dir: Path, qwen_tokenizer_path: Path) -> None:
    """Solving with QwQ-32B's recordings and Qwen2.5-Coder-1.5B picks the reasoning regime's shipped
    classifier (matched by the recording file's and the GGUF's checksums): fitted on the train table,
    calibrated on the calibration table (the gap certified at 0.8), reading no feature of a scoring pass (so a live run sends
    none) and no LLM log-prob (a recording has none)."""
    import warnings

    from tandem.classifier import ModelPairWarning, load_classifier, shipped_classifier_for
    from tandem.features import FEATURE_GROUPS
    from tandem.models import DEFAULT_MODELS
    from tandem.types import ModelInfo

    llm = RecordedBackend(RecordedConfig(str(data_dir / "traces" / "qwq-32b_gsm8k-test.jsonl")),
                          GGUFTokenizer(qwen_tokenizer_path))
    spec = DEFAULT_MODELS["qwen2.5-coder-1.5b"]
    slm = ModelInfo(spec.name, n_params=1, n_ctx=1, checksum=spec.sha256)
    path = shipped_classifier_for(llm.info, slm)
    assert path is not None and path.name == "qwq-32b+qwen2.5-coder-1.5b.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelPairWarning)
        clf = load_classifier(path, llm=llm.info, slm=slm)
    read = set(clf.spec.features)
    shadow = {*FEATURE_GROUPS["slm_question"], *FEATURE_GROUPS["slm_insights"], *FEATURE_GROUPS["llm_stream"]}
    assert read and not read & shadow
    assert [r.dataset for r in clf.spec.training.probe_runs] == ["gsm8k/test[32:89]"]
    cal = clf.spec.calibration
    assert cal is not None and cal.medium is not None and cal.low is not None
    assert [r.dataset for r in cal.medium.probe_runs] == ["gsm8k/test[146:185]", "gsm8k/test[185:223]"]
    assert cal.medium.problems == 60  # the finished rows: those whose thought closed (of 77)
    # the gap certified on the sample, not read off point estimates: no problem lost to the LLM alone
    # at medium, and the LLM alone's own answer where nothing could be certified
    for entry in (cal.low, cal.medium):
        assert entry.objective.kind == "gap" and entry.objective.confidence == 0.8 and entry.satisfied
        assert entry.paired is not None and entry.paired.wins >= entry.paired.losses
    assert cal.medium.paired is not None and cal.medium.paired.losses == 0
    assert cal.low.relative_cost <= cal.medium.relative_cost < 1.0
