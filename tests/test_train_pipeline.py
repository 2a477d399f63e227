"""Labels, calibration on a synthetic table with a known answer, and train → replay end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.classifiers.base import ClassifierLoadError, load_classifier
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.pipelines.compare import parse_spec, pick_policy_on_val
from kronaxis_lab.pipelines.compare import run as compare_run
from kronaxis_lab.pipelines.replay import run as replay_run
from kronaxis_lab.pipelines.train import run as train_run
from kronaxis_lab.routing import labels
from kronaxis_lab.routing.calibration import calibrate_router
from kronaxis_lab.routing.policies import LatencySLO, StrongWinThreshold, TaskCostCeiling, Threshold, WillingnessToPay
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext
from tests.conftest import compose, in_memory_dataset


def test_labels_by_hand():
    s = np.array([[1.0, 1.0, 1.0], [0.0, 0.4, 1.0], [0.0, 0.0, 0.0], [0.2, 0.6, 0.5]])
    np.testing.assert_array_equal(labels.cheapest_sufficient_tier(s, threshold=0.5), [0, 2, 2, 1])
    np.testing.assert_array_equal(labels.cheapest_sufficient_tier(s, none="extra_class"), [0, 2, 3, 1])
    np.testing.assert_array_equal(labels.cheapest_sufficient_tier(s, none="best"), [0, 2, 0, 1])
    np.testing.assert_allclose(labels.strong_win(s[:, [0, 2]]), [0, 1, 0, 0.3])
    np.testing.assert_array_equal(labels.relaxed_sufficient(s, t=0.15), [[1, 1, 1], [0, 0, 1], [1, 1, 1], [0, 1, 1]])
    y = labels.make_targets("strong_win", s[:, [0, 2]], soft=False)
    np.testing.assert_array_equal(y, [[1, 0], [0, 1], [1, 0], [0, 1]])  # row 3: 0.5 > 0.2 → strong wins
    with pytest.raises(ValueError, match="unknown target kind"):
        labels.make_targets("nope", s)


def test_latency_slo_and_task_ceiling():
    fleet = Fleet.from_config({"models": {"a": {"tier": 0, "latency_p95_s": 0.5},
                                          "b": {"tier": 1, "latency_p95_s": 9.0},
                                          "c": {"tier": 2}}})
    q = pd.DataFrame({"task": ["math", "chat"]})
    P = np.array([[0.2, 0.9, 0.6], [0.9, 0.95, 0.97]])
    cost = np.array([[1.0, 2.0, 3.0]] * 2)
    slo = LatencySLO(Threshold(), slo_s=1.0).bind(fleet, q)
    # b is too slow; τ=0.5 → q0: a (0.2) fails, c (0.6) ok → c; q1: a
    np.testing.assert_array_equal(slo.choose(P, cost, [0.5]), [[2, 0]])
    wtp_slo = LatencySLO(WillingnessToPay(), 1.0).bind(fleet, q)
    np.testing.assert_array_equal(wtp_slo.choose(P, cost, [np.inf]), [[2, 2]])
    tc = TaskCostCeiling(min_score={"math": 0.8, "default": 0.5}, max_cost={"math": 2.5}).bind(fleet, q)
    # math: b (0.9 ≥ 0.8, $2 ≤ 2.5); chat: a (0.9 ≥ 0.5)
    np.testing.assert_array_equal(tc.choose(P, cost, [0.0]), [[1, 0]])


class Known(Predictor):
    def __init__(self, win):
        self.win = win

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        w = self.win[mats.queries["query_id"].astype(int).to_numpy()]
        return np.stack([np.full_like(w, 0.5), 0.5 + w / 2], axis=1)


def _mats(ids, rng):
    n = len(ids)
    scores = (rng.random((n, 2)) < [0.6, 0.8]).astype(float)
    return Matrices(queries=pd.DataFrame({"query_id": ids.astype(str), "task": "t", "text": "x"}),
                    model_names=["w", "s"],
                    scores=scores, correct=scores.astype(bool), costs=np.tile([1.0, 10.0], (n, 1)),
                    input_tokens=np.ones((n, 2)), output_tokens=np.ones((n, 2)))


def test_calibration_hits_target_with_known_answer():
    """Win scores are uniform: sending a share p to the strong model needs τ = 1 − p; the achieved test share
    must be ≈ 0.3 and its 95 % CI must cover 0.3."""
    rng = np.random.default_rng(0)
    win = rng.random(8000)
    fleet = Fleet.from_config({"models": {"w": {"tier": 0, "price_in": 1}, "s": {"tier": 1, "price_in": 10}}})
    val, test = _mats(np.arange(4000), rng), _mats(np.arange(4000, 8000), rng)
    ctx = ReplayContext(test=test, fleet=fleet, val=val, train=val)
    router = PolicyRouter(Known(win), StrongWinThreshold(), "known")
    P = router.predictions(ctx, test)
    out = calibrate_router(router, ctx, P, test.costs, target="premium_share", value=0.3, n_boot=400)
    # P_s − P_w = win/2, so share 0.3 ↔ win ≥ 0.7 ↔ τ ≈ 0.35
    assert out["param"] == pytest.approx(0.35, abs=0.01)
    assert abs(out["val_achieved"] - 0.3) < 0.01 and out["val_achieved"] <= 0.3
    assert abs(out["test_achieved"] - 0.3) < 0.03
    assert out["test_ci"][0] <= 0.3 <= out["test_ci"][1] and out["test_ci"][1] - out["test_ci"][0] < 0.06
    budget = calibrate_router(router, ctx, P, test.costs, target="usd_per_1k", value=4000.0, n_boot=200)
    # $1k budget 4000 ↔ 1000·(1 + 9p) ≤ 4000 ↔ p ≤ 1/3
    assert budget["val_achieved"] <= 4000 and abs(budget["test_premium_share"] - 1 / 3) < 0.04
    with pytest.raises(ValueError, match="calibration target"):
        calibrate_router(router, ctx, P, test.costs, target="vibes", value=1)


def learnable_dataset(n=400, seed=0):
    """'prove'/'integral' queries fail on the cheap model; chit-chat succeeds on both."""
    rng = np.random.default_rng(seed)
    hard_words = ["prove the theorem about", "compute the integral of", "derive the closed form for"]
    easy_words = ["say hello to", "what colour is", "tell me a joke about"]
    things = ["cats", "primes", "rivers", "matrices", "clouds", "graphs", "tea", "stars", "bridges", "music"]
    rows, outs = [], []
    for i in range(n):
        hard = i % 2 == 0
        text = f"{rng.choice(hard_words if hard else easy_words)} {rng.choice(things)} number {i}"
        rows.append({"query_id": f"q{i}", "text": text, "task": "hard" if hard else "easy"})
        weak_ok = (not hard) and rng.random() < 0.95 or hard and rng.random() < 0.1
        tokens = {"input_tokens": 10, "output_tokens": 10}
        outs += [{"query_id": f"q{i}", "model": "weak", "score": float(weak_ok), **tokens},
                 {"query_id": f"q{i}", "model": "strong", "score": float(rng.random() < 0.95), **tokens}]
    fleet = {"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1},
                        "strong": {"tier": 1, "price_in": 20, "price_out": 20}}}
    return pd.DataFrame(rows), pd.DataFrame(outs), fleet


def save_learnable(path, n=400, name="learnable"):
    """learnable_dataset(n) imported and saved as a `dataset=saved` directory at `path`."""
    q, o, fleet = learnable_dataset(n)

    in_memory_dataset(q, o, fleet, name).save(path)


def test_train_then_replay_pipeline(tmp_path):
    save_learnable(tmp_path / "ds")
    over = ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "classifier=tfidf_logreg"]
    tr = train_run(compose("train", over, tmp_path / "train"))
    assert (tmp_path / "train/classifier/classifier.json").is_file()
    m = json.loads((tmp_path / "train/train_metrics.json").read_text())
    assert m["val"]["per_model"]["weak"]["auc"] > 0.9  # learnable: hard queries fail on weak

    rp = replay_run(compose("replay", ["dataset=saved", f"dataset.path={tmp_path / 'ds'}",
                                       f"classifier_dir={tr['classifier_dir']}",
                                       "calibration={target:premium_share,value:0.6}"], tmp_path / "replay"))
    r = rp["metrics"]
    trained = [k for k in r if k.startswith("TfidfLogRegRouter")]
    assert len(trained) == 3  # wtp, threshold, strong_win (2-model fleet)
    best = max(trained, key=lambda k: r[k]["aiq"])
    assert r[best]["aiq"] > r["random"]["aiq"] + 0.02
    assert r[best]["savings_at_95pct_premium"] > 0.3
    cal = r[trained[0]]["calibration"]
    assert cal["target"] == "premium_share" and cal["test_achieved"] <= 0.75
    rep = (tmp_path / "replay/report.md").read_text()
    assert "TfidfLogRegRouter" in rep


def test_replay_refuses_leaky_split(tmp_path):
    save_learnable(tmp_path / "ds", 120, name="x")
    tr = train_run(compose("train", ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "classifier=tfidf_logreg"],
                           tmp_path / "t"))
    cfg = compose("replay", ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "dataset.split.seed=7",
                             f"classifier_dir={tr['classifier_dir']}"], tmp_path / "r")
    with pytest.raises(ValueError, match="training queries may be in this test split"):
        replay_run(cfg)


def test_bad_classifier_dir_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = compose("replay", ["dataset=routerbench", "dataset.path=tests/fixtures/routerbench",
                             f"classifier_dir={tmp_path / 'empty'}"], tmp_path / "r")
    with pytest.raises(ClassifierLoadError, match="classifier.json is missing"):
        replay_run(cfg)


def test_compare_pipeline_trains_picks_policy_on_val_and_tabulates(tmp_path):
    """kronaxis-compare: two classifiers trained, each shown under its val-chosen policy next to the references."""
    save_learnable(tmp_path / "ds", 300)
    over = ["datasets=[saved]", f"overrides=['dataset.path={tmp_path / 'ds'}']",
            "classifiers=[tfidf:tfidf_logreg,rules]", "bootstrap.n=100"]
    res = compare_run(compose("compare", over, tmp_path))
    (r,) = res["results"]
    names = [row["router"] for row in r["rows"]]
    assert names[0].startswith("tfidf (") and names[1].startswith("rules (") and "oracle" in names and "random" in names
    val = json.loads((tmp_path / "saved/replay_val/metrics.json").read_text())["routers"]
    test = json.loads((tmp_path / "saved/replay/metrics.json").read_text())["routers"]
    for row, cls in zip(r["rows"][:2], ["TfidfLogRegRouter", "RuleRouter"]):
        # the entry shown is the val-best one, found by the identity it carries; its numbers are the test ones
        clf_dir = str(tmp_path / "saved/train" / row["label"] / "classifier")
        assert row["entry"] == pick_policy_on_val(val, clf_dir)
        identity = test[row["entry"]]["identity"]
        assert identity == {"label": row["label"], "classifier": cls, "classifier_dir": clf_dir,
                            "policy": identity["policy"]} and identity["policy"] in ("wtp", "threshold", "strong_win")
        assert row["router"] == f"{row['label']} ({identity['policy']})"
        assert row["aiq"] == pytest.approx(test[row["entry"]]["aiq"])
    by = {row["router"].split(" (")[0]: row for row in r["rows"]}
    assert by["tfidf"]["aiq"] > by["random"]["aiq"] + 0.02 and by["tfidf"]["train_s"] > 0
    assert (tmp_path / "saved/train/tfidf/classifier/classifier.json").is_file()
    # the winner: the trained classifier with the highest val AIQ (never a reference router), in comparison.json
    trained = [row for row in r["rows"] if row["kind"] == "classifier"]
    w = r["winner"]
    assert w["label"] == max(trained, key=lambda row: row["val_aiq"])["label"] == "tfidf"
    assert w["classifier_dir"] == str(tmp_path / "saved/train/tfidf/classifier") and w["test_aiq"] == by["tfidf"]["aiq"]
    assert json.loads((tmp_path / "comparison.json").read_text())["datasets"][0]["winner"] == w
    assert r["focus"] == "tfidf" and "focus_minus" not in by["tfidf"]  # focus: the winner
    d = by["random"]["focus_minus"]["aiq"]  # tfidf − random: learnable data, so clearly above 0
    assert d["diff"] == pytest.approx(by["tfidf"]["aiq"] - by["random"]["aiq"]) and d["lo"] > 0
    md = (tmp_path / "comparison.md").read_text()
    assert "## saved" in md and "| tfidf (" in md and "tfidf − this: AIQ [95% CI]" in md
    # resume: same overrides → the trained classifier is reused, changed overrides → retrained
    clf_json = tmp_path / "saved/train/tfidf/classifier/classifier.json"
    mtime = clf_json.stat().st_mtime_ns
    again = compare_run(compose("compare", over, tmp_path))
    assert clf_json.stat().st_mtime_ns == mtime and again["results"][0]["rows"][0]["reused"] is True
    compare_run(compose("compare", [*over[:2], "classifiers=['tfidf:tfidf_logreg@classifier.C=0.5']", "bootstrap.n=0"],
                        tmp_path))
    assert clf_json.stat().st_mtime_ns != mtime
    assert "ensemble" in compose("compare", [], tmp_path).classifiers  # the default set includes the ensemble
    assert parse_spec("tp1:tier_predictor@classifier.x=1@targets.kind=relaxed") == (
        "tp1", ["classifier=tier_predictor", "classifier.x=1", "targets.kind=relaxed"])
    for bad in (["a+b:rules"], ["rules", "rules"]):
        with pytest.raises(ValueError, match="bad classifier spec|duplicate"):
            compare_run(compose("compare", ["classifiers=[" + ",".join(f"'{b}'" for b in bad) + "]"], tmp_path / "bad"))
    with pytest.raises(KeyError, match="no replay entry for the classifier in /nope"):
        pick_policy_on_val(val, "/nope")


def test_compare_blend_loads_its_trained_rows_and_weighs_them_on_val(tmp_path):
    """blends={b:[tfidf,rules]}: an ensemble of the two trained rows, members loaded (not refitted), weights chosen
    on val; it is a row (and a possible winner) like the others, with its members' training time in train_s."""
    save_learnable(tmp_path / "ds", 300)
    over = ["datasets=[saved]", f"overrides=['dataset.path={tmp_path / 'ds'}']", "classifiers=[tfidf:tfidf_logreg,rules]",
            "blends={mix:[tfidf,rules],avg:{members:[rules,tfidf],combiner:mean}}", "bootstrap.n=0"]
    (r,) = compare_run(compose("compare", over, tmp_path))["results"]
    by = {row["label"]: row for row in r["rows"] if row["kind"] == "classifier"}
    assert set(by) == {"tfidf", "rules", "mix", "avg"} and by["mix"]["blend_of"] == ["tfidf", "rules"]
    assert by["mix"]["combiner"] == "blend" and by["avg"]["combiner"] == "mean"
    assert by["mix"]["train_s"] >= by["tfidf"]["train_s"] + by["rules"]["train_s"]
    blend = load_classifier(tmp_path / "saved/train/mix/classifier")
    assert blend.combiner == "blend" and set(blend.report_["blend"]["weights"]) == {"tfidf", "rules"}
    assert blend.report_["blend"]["costs"].startswith("per-query")  # kronaxis-train priced val as replay does
    texts = ["what is 2 + 2", "prove the Riemann hypothesis"]
    member = load_classifier(tmp_path / "saved/train/tfidf/classifier")
    np.testing.assert_allclose(blend.member_predictions(texts)["tfidf"], member.predict_proba(texts))  # loaded as is
    assert by["mix"]["val_aiq"] >= max(by["tfidf"]["val_aiq"], by["rules"]["val_aiq"]) - 0.02
    avg = load_classifier(tmp_path / "saved/train/avg/classifier")  # combiner=mean: the members' plain average
    rules = load_classifier(tmp_path / "saved/train/rules/classifier")
    assert avg.combiner == "mean" and "blend" not in avg.report_
    np.testing.assert_allclose(avg.predict_proba(texts), (member.predict_proba(texts) + rules.predict_proba(texts)) / 2)
    for bad in ("{tfidf:[tfidf,rules]}", "{m:[tfidf]}", "{m:[tfidf,nope]}", "{m:{members:[tfidf,rules],combiner:logreg}}",
                "{m:{members:[tfidf,rules],weights:[1,2]}}"):
        with pytest.raises(ValueError, match="blend"):
            compare_run(compose("compare", [*over[:3], f"blends={bad}"], tmp_path / "bad"))


def test_pretrained_member_refuses_a_classifier_fitted_on_other_data(tmp_path):
    from kronaxis_lab.classifiers.ensemble import EnsembleRouter
    from kronaxis_lab.classifiers.pretrained import PretrainedClassifier

    save_learnable(tmp_path / "ds", 200)
    cfg = compose("train", ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "classifier=tfidf_logreg"], tmp_path / "t")
    res = train_run(cfg)
    info = json.loads((Path(res["classifier_dir"]) / "train_info.json").read_text())
    assert len(info["train_fingerprint"]) == 64
    clf = res["classifier"]
    q = ["a", "b", "c"]
    Y = np.full((3, len(clf.model_names_)), 0.5)
    with pytest.raises(ClassifierLoadError, match="fitted on other data"):
        PretrainedClassifier(res["classifier_dir"]).fit(q, Y, clf.model_names_)
    with pytest.raises(ClassifierLoadError, match="no train_info.json"):
        PretrainedClassifier(str(tmp_path)).fit(q, Y, clf.model_names_)
    node = {"_target_": "kronaxis_lab.classifiers.pretrained.PretrainedClassifier", "path": res["classifier_dir"]}
    with pytest.raises(ValueError, match="cross-fitting"):
        EnsembleRouter(members={"a": node, "b": node}, combiner="logreg").fit(q, Y, clf.model_names_)
