"""The sufficiency classifier file: numpy inference equals scikit-learn, strict loading, model pairs."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from tandem import ConfigError, ModelInfo, PipelineConfig, Tandem
from tandem.backends.scripted import ScriptedBackend
from tandem.classifier import (
    FORMAT,
    ModelPairWarning,
    SufficiencyClassifier,
    classifier_from_dict,
    load_classifier,
    shipped_classifier_for,
)
from tandem.features import FEATURE_GROUPS, FEATURE_NAMES
from tandem.policy import StopRule
from tandem.train.data import Rows, feature_names
from tandem.train.fit import fit_estimator, hyperparameters, make_classifier

pytest.importorskip("sklearn")

GROUPS = ["llm_stream", "progress"]


def random_rows(groups=GROUPS, n=300, seed=0) -> Rows:
    rng = np.random.default_rng(seed)
    names = feature_names(groups)
    X = rng.normal(size=(n, len(names))) * rng.uniform(0.1, 5.0, size=len(names))
    X[:, names.index("stage")] = rng.integers(0, 6, size=n)  # integer-valued, with ties at the splits
    X[:, names.index("llm_tokens")] = rng.integers(0, 300, size=n)
    w = rng.normal(size=len(names))
    y = (X @ w / np.abs(w).sum() + 0.01 * X[:, names.index("llm_tokens")] + rng.normal(size=n) > 1.0).astype(int)
    return Rows(names, X, y, [f"p{i // 6}" for i in range(n)], X[:, names.index("stage")].astype(int),
                X[:, names.index("llm_tokens")].astype(int))


TRAINING = {"probe_runs": [], "split": "synthetic", "rows": 300, "positives": 100, "problems": 50,
            "label": "test", "feature_groups": GROUPS}


def fitted(kind: str, rows: Rows | None = None, **hyper):
    rows = rows or random_rows()
    est = fit_estimator(kind, rows.X, rows.y, hyperparameters(kind, hyper))
    return est, make_classifier(kind, est, rows, training=TRAINING), rows


def models_block(llm="big", slm="small", llm_sum="", slm_sum=""):
    return {"llm": {"name": llm, "checksum": llm_sum, "n_params": 1500, "tokenizer_id": "t", "chat_template_id": "c"},
            "slm": {"name": slm, "checksum": slm_sum, "n_params": 500, "tokenizer_id": "t", "chat_template_id": "c"}}


@pytest.mark.parametrize("kind", ["logistic", "gbdt"])
def test_json_round_trip_equals_sklearn(tmp_path: Path, kind: str) -> None:
    est, clf, rows = fitted(kind)
    path = clf.save(tmp_path / "m.json")
    loaded = load_classifier(path)
    X = random_rows(seed=1).X
    want = est.predict_proba(X)[:, 1]
    np.testing.assert_allclose(loaded.predict_proba(X), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(rows.X), est.predict_proba(rows.X)[:, 1], rtol=0, atol=1e-6)
    # one dict at a time, with extra keys the classifier does not read
    for x, p in zip(X[:20], want[:20], strict=True):
        feats = dict(zip(rows.features, x.tolist(), strict=True)) | {"slm_q_lp_mean": 123.0, "unrelated": 1.0}
        assert loaded.sufficiency(feats) == pytest.approx(p, abs=1e-6)
    assert json.loads(path.read_text())["format"] == FORMAT


def test_gbdt_matches_sklearn_exactly_at_split_thresholds(tmp_path: Path) -> None:
    est, clf, rows = fitted("gbdt")
    loaded = load_classifier(clf.save(tmp_path / "m.json"))
    X = np.repeat(rows.X[:1], 200, axis=0)
    trees = loaded.spec.params.trees  # type: ignore[union-attr]
    k = 0
    for t in trees[:40]:
        for f, thr in zip(t.feature, t.threshold, strict=True):
            if f >= 0 and k < len(X):
                X[k, f] = thr  # on the cut itself, and just around it
                X[k + 1 if k + 1 < len(X) else k, f] = np.nextafter(thr, np.inf)
                k += 2
    want = est.predict_proba(X)[:, 1]
    np.testing.assert_allclose(loaded.predict_proba(X), want, rtol=0, atol=1e-6)
    one_by_one = [loaded.sufficiency(dict(zip(rows.features, x.tolist(), strict=True))) for x in X]
    np.testing.assert_allclose(one_by_one, want, rtol=0, atol=1e-6)


def test_stop_rule_and_operating_points() -> None:
    _, clf, _ = fitted("logistic")
    rule = clf.stop_rule()
    assert isinstance(rule, StopRule)
    assert {e: rule.setting(e).max_budget for e in ("low", "medium", "high")} == {"low": 64, "medium": 128,
                                                                                  "high": 256}
    doc = clf.to_dict()
    doc["efforts"]["medium"] = {"max_budget": 128, "threshold": 0.7, "stage_thresholds": {"0": 0.9}}
    doc["route"], doc["cascade"] = {"threshold": 0.8}, {"threshold": -0.4}
    clf2 = classifier_from_dict(json.loads(json.dumps(doc)))
    assert clf2.stop_rule().setting("medium").threshold_at(0) == 0.9
    assert clf2.stop_rule().setting("medium").threshold_at(2) == 0.7
    assert (clf2.route_threshold, clf2.cascade_threshold) == (0.8, -0.4)
    assert clf2.uses_shadow is False  # llm_stream + progress: no shadow pass needed


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    return p


def good_doc():
    _, clf, _ = fitted("logistic")
    return clf.to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(surprise=1), "surprise: unknown key"),
        (lambda d: d["efforts"]["low"].update(colour="red"), "efforts.low.colour: unknown key"),
        (lambda d: d["training"].update(extra=True), "training.extra: unknown key"),
        (lambda d: d.update(version=2), "unsupported classifier file version 2"),
        (lambda d: d.update(format="something-else"), "not a tandem classifier file"),
        (lambda d: d.update(kind="forest"), "kind"),
        (lambda d: d["params"]["coef"].pop(), "weights for"),
        (lambda d: d["efforts"].pop("high"), "missing high"),
        (lambda d: d["features"].__setitem__(0, "no_such_feature"), "no_such_feature"),
        (lambda d: d.update(kind="gbdt"), "a gbdt model needs"),
    ],
)
def test_loading_refuses_bad_files(tmp_path: Path, mutate, message: str) -> None:
    doc = good_doc()
    mutate(doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_classifier(write(tmp_path, doc))


def test_loading_refuses_pickles_nan_and_non_json(tmp_path: Path) -> None:
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps(good_doc()))
    with pytest.raises(ConfigError, match="never unpickled"):
        load_classifier(p)
    text = json.dumps(good_doc()).replace('"intercept": ', '"intercept": NaN, "x": ', 1)
    (tmp_path / "nan.json").write_text(text)
    with pytest.raises(ConfigError, match="not a JSON classifier file"):
        load_classifier(tmp_path / "nan.json")
    with pytest.raises(ConfigError, match="not found"):
        load_classifier(tmp_path / "missing.json")


def test_broken_tree_is_refused(tmp_path: Path) -> None:
    _, clf, _ = fitted("gbdt", n_estimators=3)
    doc = clf.to_dict()
    doc["params"]["trees"][0]["left"][0] = 0  # a cycle
    with pytest.raises(ConfigError, match="children must point forward"):
        load_classifier(write(tmp_path, doc))


def test_missing_features_are_refused_at_first_use_with_their_names() -> None:
    _, clf, rows = fitted("logistic", random_rows(groups=["slm_question", "progress"]))
    assert clf.uses_shadow
    feats = {n: 0.0 for n in FEATURE_GROUPS["llm_stream"] + FEATURE_GROUPS["progress"]}
    with pytest.raises(ConfigError, match=r"slm_question\).*slm_q_lp_mean.*shadow pass"):
        clf.sufficiency(feats)


def test_a_shadow_classifier_without_shadow_features_fails_in_the_pipeline(tmp_path: Path) -> None:
    _, clf, _ = fitted("logistic", random_rows(groups=["slm_question", "progress"]))
    llm = ScriptedBackend("Step one. Step two. The answer is \\boxed{7}.", name="big")
    slm = ScriptedBackend(" The answer is \\boxed{7}.", name="small")
    t = Tandem(llm, slm, policy=clf, rule=clf.stop_rule(), config=PipelineConfig(shadow=False))
    with pytest.raises(ConfigError, match="slm_q_lp_mean"):
        t.solve("What is 3 + 4?")


def test_a_classifier_without_shadow_features_runs_without_shadow_passes(tmp_path: Path) -> None:
    from tandem.factory import load_policy

    _, clf, _ = fitted("gbdt")
    doc = clf.to_dict() | {"models": models_block("big", "small")}
    path = classifier_from_dict(doc).save(tmp_path / "m.json")
    llm = ScriptedBackend(" ".join(f"Step {i} adds one." for i in range(40)) + " So \\boxed{7}.", name="big")
    slm = ScriptedBackend(" The answer is \\boxed{7}.", name="small")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same pair: no warning
        policy, rule = load_policy(str(path), llm, slm)
    res = Tandem(llm, slm, policy=policy, rule=rule).solve("What is 3 + 4?")
    assert res.checkpoints and all(0.0 <= c.probability <= 1.0 for c in res.checkpoints)
    assert not any(k.startswith("slm_") for k in res.checkpoints[0].features)  # no shadow pass was paid for


def test_another_model_pair_warns(tmp_path: Path) -> None:
    doc = good_doc()
    doc["models"] = models_block(llm_sum="aaa", slm_sum="bbb")
    path = write(tmp_path, doc)
    same = dict(n_params=1, n_ctx=1)
    with pytest.warns(ModelPairWarning, match="LLM 'big', not 'other'"):
        load_classifier(path, llm=ModelInfo("other", **same), slm=ModelInfo("small", **same))
    with pytest.warns(ModelPairWarning, match="SLM"):  # checksums decide when both sides have one
        load_classifier(path, llm=ModelInfo("big", checksum="aaa", **same),
                        slm=ModelInfo("small", checksum="zzz", **same))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_classifier(path, llm=ModelInfo("renamed", checksum="aaa", **same),
                        slm=ModelInfo("small", **same))


def test_entropy_kind_mismatch_is_refused(tmp_path: Path) -> None:
    from tandem.types import Capabilities

    doc = good_doc()
    path = write(tmp_path, doc)
    clf = load_classifier(path)
    if not any("_ent_" in f for f in clf.features):
        pytest.skip("this classifier reads no entropy feature")
    same = dict(n_params=1, n_ctx=1)
    topk = Capabilities(entropy="topk")
    with pytest.raises(ConfigError, match="entropies"):
        load_classifier(path, llm=ModelInfo("big", capabilities=topk, **same),
                        slm=ModelInfo("small", capabilities=topk, **same))
    load_classifier(path, llm=ModelInfo("big", **same), slm=ModelInfo("small", **same))  # exact: fine


def test_shipped_classifier_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tandem.classifier as mod

    folder = tmp_path / "classifiers"
    folder.mkdir()
    for name, models in (("a.json", models_block("big", "small")),
                         ("b.json", models_block("big", "small", "s1", "s2")),
                         ("c.json", models_block("x", "y"))):
        doc = good_doc()
        doc["models"] = models
        (folder / name).write_text(json.dumps(doc))
    monkeypatch.setattr(mod, "_shipped_dir", lambda: folder)
    info = dict(n_params=1, n_ctx=1)
    assert shipped_classifier_for(ModelInfo("big", **info), ModelInfo("small", **info)) == folder / "a.json"
    assert shipped_classifier_for(ModelInfo("big", checksum="s1", **info),
                                  ModelInfo("small", checksum="s2", **info)) == folder / "b.json"
    assert shipped_classifier_for(ModelInfo("x", **info), ModelInfo("y", **info)) == folder / "c.json"
    assert shipped_classifier_for(ModelInfo("q", **info), ModelInfo("y", **info)) is None
    monkeypatch.setattr(mod, "_shipped_dir", lambda: tmp_path / "nowhere")
    assert shipped_classifier_for(ModelInfo("big", **info), ModelInfo("small", **info)) is None


def test_the_package_ships_no_unreadable_classifier() -> None:
    import tandem.classifier as mod

    info = dict(n_params=1, n_ctx=1)
    assert shipped_classifier_for(ModelInfo("no-such-llm", **info), ModelInfo("no-such-slm", **info)) is None
    for path in sorted(mod._shipped_dir().glob("*.json")):  # every shipped file loads whole, calibrated
        clf = load_classifier(path)
        assert clf.spec.calibration is not None, path


def test_the_embedded_pair_has_a_shipped_classifier_matched_by_checksum() -> None:
    """`tandem solve` / `tandem serve` on the embedded default pick the shipped classifier out of the box."""
    from tandem.models import DEFAULT_MODELS

    llm_spec, slm_spec = DEFAULT_MODELS["qwen2.5-coder-1.5b"], DEFAULT_MODELS["qwen2.5-coder-0.5b"]
    llm = ModelInfo(llm_spec.name, n_params=1, n_ctx=1, checksum=llm_spec.sha256)
    slm = ModelInfo(slm_spec.name, n_params=1, n_ctx=1, checksum=slm_spec.sha256)
    path = shipped_classifier_for(llm, slm)
    assert path is not None and path.name == "qwen2.5-coder-1.5b+0.5b.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelPairWarning)  # the pair it was trained for: no warning
        clf = load_classifier(path, llm=llm, slm=slm)
    spec = clf.spec
    # trained on math only (the train split), calibrated on the held-out calibration split
    assert [r.dataset for r in spec.training.probe_runs] == ["gsm8k/train[100:250]", "gsm8k/train[250:400]"]
    cal = spec.calibration
    assert cal is not None
    points = [cal.low, cal.medium, cal.high, cal.route, cal.cascade]
    for point in points:
        assert point is not None
        assert [r.dataset for r in point.probe_runs] == ["gsm8k/train[400:475]", "gsm8k/train[475:550]"]
    # the efforts are ordered by cost on the calibration table, and low trades accuracy for cost
    costs = [p.relative_cost for p in points[:3] if p is not None]
    assert costs == sorted(costs) and costs[0] <= 0.5, costs
    assert clf.stop_rule().setting("low").hands_over


def test_the_default_policy_is_the_shipped_classifier_else_the_budget(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import tandem.classifier as mod
    from tandem.backends.scripted import ScriptedBackend
    from tandem.factory import load_policy
    from tandem.policy import BudgetPolicy

    llm, slm = ScriptedBackend("x", name="big"), ScriptedBackend("y", name="small")
    monkeypatch.setattr(mod, "_shipped_dir", lambda: tmp_path / "nowhere")
    with caplog.at_level(logging.INFO, logger="tandem"):
        policy, rule = load_policy("default", llm, slm)
    assert isinstance(policy, BudgetPolicy) and "budget policy" in caplog.text
    folder = tmp_path / "classifiers"
    folder.mkdir()
    doc = good_doc()
    doc["models"] = models_block("big", "small")
    (folder / "pair.json").write_text(json.dumps(doc))
    monkeypatch.setattr(mod, "_shipped_dir", lambda: folder)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tandem"):
        policy, rule = load_policy("default", llm, slm)
    assert isinstance(policy, SufficiencyClassifier) and rule.setting("medium") == policy.stop_rule().setting("medium")
    assert "pair.json (shipped for big + small)" in caplog.text and "never hand over" not in caplog.text
    # an effort calibrated to never hand over is said so: it runs as the LLM alone
    doc["efforts"]["low"] |= {"threshold": 1.01, "finish": True}
    (folder / "pair.json").write_text(json.dumps(doc))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tandem"):
        policy, rule = load_policy("default", llm, slm)
    assert not rule.setting("low").hands_over and "effort(s) low never hand over" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tandem"):
        load_policy("default", llm, slm, handover="hint")  # hint hand-over ignores `finish`: nothing to say
    assert "never hand over" not in caplog.text


def test_every_feature_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "classifier.md").read_text()
    missing = [n for n in FEATURE_NAMES if f"`{n}`" not in doc]
    assert not missing
