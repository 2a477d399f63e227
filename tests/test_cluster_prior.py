"""Cluster prior (kronaxis_lab/classifiers/cluster_prior.py): queries of 3 synthetic tasks with distinct
vocabularies and known per-task success rates; the router never sees the task label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.classifiers.base import load_classifier
from kronaxis_lab.classifiers.calibration import log_loss
from kronaxis_lab.classifiers.cluster_prior import ClusterPriorRouter, cluster_rates
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing.policies import WillingnessToPay
from kronaxis_lab.routing.replay import replay_matrices
from kronaxis_lab.routing.routers import ClassifierPredictor, PolicyRouter, PriorPredictor

MODELS = ["small", "mid", "large"]
VOCAB = {
    "math": "integral derivative matrix eigenvalue theorem prove lemma algebra calculus vector".split(),
    "poetry": "poem sonnet rhyme stanza verse metaphor haiku lyric ballad ode".split(),
    "code": "python function loop compile array recursion class debug syntax module".split(),
}
RATES = {"math": [0.2, 0.6, 0.9], "poetry": [0.8, 0.5, 0.9], "code": [0.3, 0.9, 0.7]}  # per task, per model
TFIDF = {"features": "tfidf", "tfidf": {"min_df": 1}, "svd_components": 8, "show_progress": False}


def three_tasks(n_per_task: int, seed: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(queries, 0/1 outcomes ~ Bernoulli(RATES[task]), task labels): 6 words of the task's vocabulary each."""
    rng = np.random.default_rng(seed)
    queries, rows, tasks = [], [], []
    for task, words in VOCAB.items():
        for _ in range(n_per_task):
            queries.append(" ".join(rng.choice(words, size=6)))
            rows.append(rng.random(len(MODELS)) < RATES[task])
            tasks.append(task)
    return queries, np.array(rows, dtype=float), tasks


def _mats(queries, Y, tasks) -> Matrices:
    n = len(queries)
    qdf = pd.DataFrame({"query_id": [f"q{i}" for i in range(n)], "text": queries, "task": tasks, "category": tasks})
    return Matrices(queries=qdf, model_names=MODELS, scores=Y, correct=Y.astype(bool),
                    costs=np.tile([1.0, 4.0, 20.0], (n, 1)), input_tokens=np.ones((n, 3)),
                    output_tokens=np.ones((n, 3)))


def test_cluster_rates_by_hand():
    labels = np.array([0, 0, 1])
    y = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 0.0]])  # NaN: unobserved, neither a success nor a count
    r, g = cluster_rates(labels, y, 2, smoothing=1.0)
    np.testing.assert_allclose(g, [2 / 3, 1 / 2])
    # cluster 0: model 0 (1 + 0 + 1·2/3) / (2 + 1), model 1 (1 + 1/2) / (1 + 1); cluster 1: (1 + 2/3)/2, (0 + 1/2)/2
    np.testing.assert_allclose(r, [[5 / 9, 3 / 4], [5 / 6, 1 / 4]])


def test_recovers_the_per_task_rates_without_the_label():
    q, Y, _ = three_tasks(200, 0)
    qt, _, tt = three_tasks(50, 1)
    clf = ClusterPriorRouter(n_clusters=3, assignment="hard", **TFIDF).fit(q, Y, MODELS)
    P = clf.predict_proba(qt)
    truth = np.array([RATES[t] for t in tt])
    assert np.abs(P - truth).max() < 0.1 and np.abs(P - truth).mean() < 0.05
    A = clf.cluster_proba(qt)
    assert A.shape == (len(qt), 3) and set(np.unique(A)) == {0.0, 1.0}  # hard: one-hot memberships
    assert all(len(set(A[np.array(tt) == t].argmax(1))) == 1 for t in VOCAB)  # one cluster per task


def test_equals_the_labelled_prior_in_replay(tmp_path):
    """Hard clusters that recover the tasks give exactly PriorPredictor's P̂ (same formula, same smoothing), so
    the replayed λ sweeps are identical."""
    q, Y, tasks = three_tasks(200, 0)
    qt, Yt, tt = three_tasks(60, 1)
    clf = ClusterPriorRouter(n_clusters=3, assignment="hard", smoothing=10.0, **TFIDF).fit(q, Y, MODELS)
    clf_dir = clf.save_pretrained(tmp_path / "cp")
    fleet = Fleet.from_config({"models": {m: {"tier": i, "price_in": p, "price_out": p}
                                          for i, (m, p) in enumerate(zip(MODELS, [1, 4, 20]))}})
    routers = [PolicyRouter(PriorPredictor(by="task", smoothing=10.0), WillingnessToPay(), "prior"),
               PolicyRouter(ClassifierPredictor(str(clf_dir)), WillingnessToPay(), "cluster")]
    res = replay_matrices(_mats(qt, Yt, tt), fleet, routers, train=_mats(q, Y, tasks))
    np.testing.assert_allclose(res.results["cluster"].predictions, res.results["prior"].predictions, atol=1e-12)
    assert res.routers["cluster"]["aiq"] == pytest.approx(res.routers["prior"]["aiq"])


def test_val_picks_k_and_temperature():
    q, Y, _ = three_tasks(150, 0)
    qv, Yv, _ = three_tasks(40, 2)
    clf = ClusterPriorRouter(n_clusters_grid=[1, 3, 6], **TFIDF).fit(q, Y, MODELS, qv, Yv)
    losses = {row["n_clusters"]: row["val_log_loss"] for row in clf.selection_}
    assert set(losses) == {1, 3, 6} and clf.n_clusters_ == min(losses, key=losses.get)
    assert clf.n_clusters_ >= 3 and losses[clf.n_clusters_] < losses[1] - 0.05  # tasks explain the variance
    hard = ClusterPriorRouter(n_clusters=clf.n_clusters_, assignment="hard", **TFIDF).fit(q, Y, MODELS)
    assert log_loss(clf.predict_proba(qv), Yv) <= log_loss(hard.predict_proba(qv), Yv) + 1e-9  # soft ≥ hard on val
    A = clf.cluster_proba(qv)
    np.testing.assert_allclose(A.sum(axis=1), 1.0)
    P = clf.predict_proba(qv)
    assert (P >= clf.rates_.min(0) - 1e-12).all() and (P <= clf.rates_.max(0) + 1e-12).all()  # a mix of rates


def test_nan_targets_are_masked_not_failures(tmp_path):
    q, Y, tasks = three_tasks(200, 0)
    Yn = Y.copy()
    math_rows = np.flatnonzero(np.array(tasks) == "math")
    Yn[math_rows[Y[math_rows, 0] == 0][:20], 0] = np.nan  # hide 20 failures of `small` on math
    a = ClusterPriorRouter(n_clusters=3, assignment="hard", **TFIDF).fit(q, Yn, MODELS)
    P = a.predict_proba(["prove the integral lemma"])[0]
    obs = np.isfinite(Yn[:, 0])
    g = Yn[obs, 0].mean()
    m_obs = Yn[math_rows, 0][np.isfinite(Yn[math_rows, 0])]
    assert P[0] == pytest.approx((m_obs.sum() + 10 * g) / (len(m_obs) + 10))  # the 20 hidden rows: not counted
    again = load_classifier(a.save_pretrained(tmp_path / "s"))
    np.testing.assert_array_equal(again.predict_proba(q[:30]), a.predict_proba(q[:30]))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "classifier.json", "cluster_prior.json", "cluster_prior.npz", "tfidf_svd.joblib"]


def test_bad_options_fail_clearly():
    q, Y, _ = three_tasks(5, 0)
    with pytest.raises(ValueError, match="features 'bag' is not one of"):
        ClusterPriorRouter(features="bag").fit(q, Y, MODELS)
    with pytest.raises(ValueError, match="assignment 'fuzzy'"):
        ClusterPriorRouter(assignment="fuzzy", **TFIDF).fit(q, Y, MODELS)
    with pytest.raises(ValueError, match="no training queries"):
        ClusterPriorRouter(**TFIDF).fit([], np.zeros((0, 3)), MODELS)


def test_a_classifier_predicts_each_split_once_for_all_its_policies(tmp_path):
    """Every policy of one trained classifier reads one ClassifierPredictor: the classifier predicts the replayed
    split once, and each policy gets the same P̂ as a fresh predictor's (a copy: a router cannot alter another's)."""
    from kronaxis_lab.routing.policies import Threshold

    q, Y, tasks = three_tasks(100, 0)
    qt, Yt, tt = three_tasks(30, 1)
    clf_dir = ClusterPriorRouter(n_clusters=3, assignment="hard", **TFIDF).fit(q, Y, MODELS).save_pretrained(
        tmp_path / "cp")
    fleet = Fleet.from_config({"models": {m: {"tier": i, "price_in": p, "price_out": p}
                                          for i, (m, p) in enumerate(zip(MODELS, [1, 4, 20]))}})
    shared = ClassifierPredictor(str(clf_dir))
    calls = []
    inner = shared.clf.predict_proba
    shared.clf.predict_proba = lambda texts: calls.append(len(texts)) or inner(texts)
    routers = [PolicyRouter(shared, WillingnessToPay(), "wtp"), PolicyRouter(shared, Threshold(), "thr"),
               PolicyRouter(ClassifierPredictor(str(clf_dir)), WillingnessToPay(), "fresh")]
    res = replay_matrices(_mats(qt, Yt, tt), fleet, routers, train=_mats(q, Y, tasks))
    assert calls == [len(qt)]
    np.testing.assert_array_equal(res.results["wtp"].predictions, res.results["fresh"].predictions)
    np.testing.assert_array_equal(res.results["thr"].predictions, res.results["fresh"].predictions)
    res.results["wtp"].predictions[:] = -1
    assert (shared.predict(res.ctx) >= 0).all() and calls == [len(qt)]
