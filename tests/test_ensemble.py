"""Stacked ensemble (kronaxis_lab/classifiers/ensemble.py) on the 3-task synthetic data of test_cluster_prior:
a good member, a noise member and a memorising member with known behaviour."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy.special import expit, logit

from kronaxis_lab.classifiers.base import Classifier, as_queries, check_fit_inputs, load_classifier
from kronaxis_lab.classifiers.calibration import log_loss
from kronaxis_lab.classifiers.ensemble import EnsembleRouter, fold_ids, routing_aiq, simplex_grid
from tests.test_cluster_prior import MODELS, TFIDF, three_tasks

GOOD = {"_target_": "kronaxis_lab.classifiers.cluster_prior.ClusterPriorRouter", "n_clusters": 3,
        "assignment": "hard", **TFIDF}
NOISE = {"_target_": "tests.test_ensemble.NoiseRouter"}
MEMO = {"_target_": "tests.test_ensemble.MemoRouter"}


class NoiseRouter(Classifier):
    """P̂ uniform in (0, 1), a fixed function of the text: carries no information about the outcome."""

    def fit(self, queries, targets, model_names, val_queries=None, val_targets=None, *, model_costs=None):
        self.model_names_ = check_fit_inputs(queries, targets, model_names).model_names
        return self

    def predict_proba(self, queries):
        seeds = [int(hashlib.sha256(q.encode()).hexdigest()[:8], 16) for q in as_queries(queries)]
        return np.array([np.random.default_rng(s).uniform(0.02, 0.98, len(self.model_names_)) for s in seeds]) \
            .reshape(len(seeds), len(self.model_names_))

    def save_state(self, directory):
        pass

    def load_state(self, directory):
        pass


class MemoRouter(NoiseRouter):
    """Perfect on its training queries (returns their targets), 0.5 elsewhere: trusting its in-sample P̂ is the
    mistake cross-fitting prevents."""

    def fit(self, queries, targets, model_names, val_queries=None, val_targets=None, *, model_costs=None):
        q, y, self.model_names_, _, _ = check_fit_inputs(queries, targets, model_names)
        self.table_ = {t: np.nan_to_num(row, nan=0.5) for t, row in zip(q, y)}
        return self

    def predict_proba(self, queries):
        default = np.full(len(self.model_names_), 0.5)
        return np.array([self.table_.get(q, default) for q in as_queries(queries)]).reshape(-1, len(self.model_names_))


@pytest.fixture(scope="module")
def data():
    return three_tasks(150, 0), three_tasks(40, 2), three_tasks(60, 1)  # train, val, test


def test_fold_ids_group_equal_texts_and_balance():
    q = [f"t{i % 30}" for i in range(90)]  # every text three times
    f = fold_ids(q, 5, seed=3)
    assert all(len(set(f[[i for i, t in enumerate(q) if t == u]])) == 1 for u in set(q))  # a text: one fold
    assert sorted(np.bincount(f)) == [18] * 5
    assert np.array_equal(f, fold_ids(q, 5, seed=3)) and not np.array_equal(f, fold_ids(q, 5, seed=4))


def test_ensemble_ignores_noise_and_matches_its_best_member(data, tmp_path):
    (q, Y, _), (qv, Yv, _), (qt, Yt, _) = data
    ens = EnsembleRouter(members={"good": GOOD, "noise": NOISE}, C_grid=[0.1, 1.0, 10.0], show_progress=False)
    ens.fit(q, Y, MODELS, qv, Yv)
    val = ens.report_["val_log_loss"]
    assert val["ensemble"] < val["noise"] - 0.2 and val["ensemble"] <= val["good"] + 0.01
    members = ens.member_predictions(qt)
    test_ens = log_loss(ens.predict_proba(qt), Yt)
    assert test_ens < log_loss(members["noise"], Yt) - 0.2 and test_ens <= log_loss(members["good"], Yt) + 0.01
    w_good, w_noise = np.abs(ens.coef_[:, 0]), np.abs(ens.coef_[:, 1])
    assert (w_noise < 0.25 * w_good).all()  # the combiner learnt whom to trust

    again = load_classifier(ens.save_pretrained(tmp_path / "e"))
    assert isinstance(again, EnsembleRouter) and list(again.members_) == ["good", "noise"]
    assert (tmp_path / "e/members/good/classifier.json").is_file()
    np.testing.assert_allclose(again.predict_proba(qt), ens.predict_proba(qt), atol=1e-12)
    cfg = json.loads((tmp_path / "e/classifier.json").read_text())["config"]
    assert cfg["members"]["good"]["n_clusters"] == 3 and cfg["n_folds"] == 5


def test_cross_fitting_gives_a_memoriser_no_trust(data):
    """In-sample the memoriser is perfect; its out-of-fold P̂ is 0.5 everywhere (log-loss log 2), so the
    combiner leans on the good member and the ensemble is as good as it on unseen queries."""
    (q, Y, _), (qv, Yv, _), (qt, Yt, _) = data
    ens = EnsembleRouter(members={"good": GOOD, "memo": MEMO}, n_folds=4, show_progress=False).fit(q, Y, MODELS, qv, Yv)
    assert ens.report_["oof_log_loss"]["memo"] == pytest.approx(np.log(2))
    assert log_loss(ens.member_predictions(q)["memo"], Y) < 1e-3  # ...while in-sample it looks perfect
    good = ens.member_predictions(qt)["good"]
    assert log_loss(ens.predict_proba(qt), Yt) <= log_loss(good, Yt) + 0.01


def test_mean_combiner_and_member_from_an_object(data):
    (q, Y, _), _, (qt, _, _) = data
    ens = EnsembleRouter(members={"noise": NoiseRouter(), "good": GOOD}, combiner="mean", show_progress=False)
    ens.fit(q, Y, MODELS)
    m = ens.member_predictions(qt)
    np.testing.assert_allclose(ens.predict_proba(qt), (m["noise"] + m["good"]) / 2)
    assert ens.get_config()["members"]["noise"] == {"_target_": f"{NoiseRouter.__module__}.NoiseRouter"}
    assert "oof_log_loss" not in ens.report_  # no folds for a mean


def test_bad_ensembles_fail_clearly(data):
    (q, Y, _), _, _ = data
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleRouter(members={}).fit(q, Y, MODELS)
    with pytest.raises(ValueError, match="name directories"):
        EnsembleRouter(members={"a/b": NOISE}).fit(q, Y, MODELS)
    with pytest.raises(ValueError, match="combiner 'vote'"):
        EnsembleRouter(members={"n": NOISE}, combiner="vote").fit(q, Y, MODELS)
    with pytest.raises(ValueError, match="≥ 2 folds"):
        EnsembleRouter(members={"n": NOISE}).fit(["same"] * 4, Y[:4], MODELS)
    with pytest.raises(ValueError, match="config node with _target_"):
        EnsembleRouter(members={"n": {"k": 3}}).fit(q, Y, MODELS)


def test_simplex_grid_and_bad_step():
    g = simplex_grid(3, 0.25)
    assert g.shape == (15, 3) and np.allclose(g.sum(axis=1), 1) and (g >= 0).all()
    assert len({tuple(r) for r in g}) == 15 and simplex_grid(1, 0.1).tolist() == [[1.0]]
    with pytest.raises(ValueError, match="blend_step must divide 1"):
        simplex_grid(2, 0.3)


def test_routing_aiq_ranks_an_informed_router_above_noise(data):
    (_, _, _), (qv, Yv, _), _ = data
    costs = [1.0, 3.0, 10.0][: len(MODELS)]
    informed = np.clip(Yv + 0.1 * np.random.default_rng(0).standard_normal(Yv.shape), 0.01, 0.99)
    noise = np.random.default_rng(1).uniform(0.01, 0.99, Yv.shape)
    assert routing_aiq(informed, Yv, costs) > routing_aiq(noise, Yv, costs) + 0.05


def test_blend_weighs_members_by_val_routing_quality_and_exports_as_logreg(data, tmp_path):
    """The blend puts (almost) all weight on the good member: noise can only hurt the val routing AIQ. It
    reports the weights and every member's own val AIQ, round-trips, and its P̂ is the logit blend."""
    (q, Y, _), (qv, Yv, _), (qt, _, _) = data
    costs = [1.0, 3.0, 10.0][: len(MODELS)]
    ens = EnsembleRouter(members={"good": GOOD, "noise": NOISE}, combiner="blend", blend_step=0.1,
                         show_progress=False).fit(q, Y, MODELS, qv, Yv, model_costs=costs)
    rep = ens.report_["blend"]
    assert rep["weights"]["good"] >= 0.8 and rep["val_aiq"] >= rep["val_aiq_members"]["good"]
    assert rep["val_aiq_members"]["good"] > rep["val_aiq_members"]["noise"]
    m = ens.member_predictions(qt)
    w = np.array([rep["weights"]["good"], rep["weights"]["noise"]])
    z = w[0] * logit(np.clip(m["good"], 1e-6, 1 - 1e-6)) + w[1] * logit(np.clip(m["noise"], 1e-6, 1 - 1e-6))
    np.testing.assert_allclose(ens.predict_proba(qt), expit(z), atol=1e-9)
    again = load_classifier(ens.save_pretrained(tmp_path / "b"))
    np.testing.assert_allclose(again.predict_proba(qt), ens.predict_proba(qt), atol=1e-12)
    assert "oof_log_loss" not in ens.report_  # one fit per member: no folds
    no_val = EnsembleRouter(members={"good": GOOD, "noise": NOISE}, combiner="blend", show_progress=False)
    assert np.allclose(no_val.fit(q, Y, MODELS).coef_, 0.5)  # without val data: equal weights


class PeekRouter(NoiseRouter):
    """Reads the cheap model's outcome off the text ("ok" / "bad") on queries of its own `kind` ("long" / "short"),
    loud noise on the others (logits up to ±9, which drown a blended member's ±2.9); the premium model always
    succeeds."""

    def __init__(self, kind: str = "long"):
        self.kind = kind

    def predict_proba(self, queries):
        noise = expit(18 * (super().predict_proba(queries)[:, 0] - 0.5))
        own = np.array([q.startswith(self.kind) for q in as_queries(queries)])
        cheap = np.where(own, np.where([" ok " in q for q in as_queries(queries)], 0.95, 0.05), noise)
        return np.column_stack([cheap, np.full(len(cheap), 0.9)])


def test_blend_weights_follow_the_per_query_costs_replay_charges():
    """Two members, each reading the cheap model's outcome on one kind of query (100 short, 40 long, a long query's
    premium call 20× a short one's). Priced per model (the mean $) and priced per query as replay prices it
    (`val_costs`), the best blend differs; the priced blend's weights beat the flat blend's under replay's pricing,
    and its reported val AIQ is the best of the grid under those costs."""
    rng = np.random.default_rng(0)

    def split(n_short, n_long, tag):
        kinds = ["short"] * n_short + ["long"] * n_long
        ok = rng.random(len(kinds)) < 0.5
        q = [f"{k} {'ok' if o else 'bad'} {tag}{i}" for i, (k, o) in enumerate(zip(kinds, ok))]
        Y = np.column_stack([ok.astype(float), np.ones(len(q))])
        premium = np.array([20.0 if k == "long" else 1.0 for k in kinds])
        return q, Y, np.column_stack([np.full(len(q), 0.01), premium])

    (q, Y, _), (qv, Yv, cv) = split(40, 10, "t"), split(100, 40, "v")
    members = {"longs": {"_target_": "tests.test_ensemble.PeekRouter", "kind": "long"},
               "shorts": {"_target_": "tests.test_ensemble.PeekRouter", "kind": "short"}}
    names, flat_costs = ["cheap", "premium"], cv.mean(axis=0).tolist()
    flat = EnsembleRouter(members=members, combiner="blend", show_progress=False).fit(
        q, Y, names, qv, Yv, model_costs=flat_costs)
    priced = EnsembleRouter(members=members, combiner="blend", show_progress=False).fit(
        q, Y, names, qv, Yv, model_costs=flat_costs, val_costs=(cv, cv))
    rf, rp = flat.report_["blend"], priced.report_["blend"]
    assert rp["costs"].startswith("per-query") and rf["costs"].startswith("constant")
    assert rf["weights"]["longs"] != pytest.approx(rp["weights"]["longs"])
    Z = {n: logit(np.clip(P, 1e-6, 1 - 1e-6)) for n, P in priced.member_predictions(qv).items()}

    def replay_aiq(w):
        return routing_aiq(expit(w * Z["longs"] + (1 - w) * Z["shorts"]), Yv, cv, cv)

    assert rp["val_aiq"] == pytest.approx(max(replay_aiq(w) for w in np.linspace(0, 1, 11)))
    assert rp["val_aiq"] > replay_aiq(rf["weights"]["longs"]) + 1e-3
    assert priced.wants_val_costs() and not EnsembleRouter(members=members, combiner="mean").wants_val_costs()
    with pytest.raises(ValueError, match="val_costs have shapes"):
        EnsembleRouter(members=members, combiner="blend", show_progress=False).fit(
            q, Y, names, qv, Yv, val_costs=(cv[:5], cv))


def test_routing_aiq_decides_on_expected_and_charges_realized_costs(data):
    """Per-query costs equal to the per-model ones give the same AIQ; charging other (recorded) costs than the ones
    decided on changes it; a realized matrix of the wrong shape fails."""
    _, (qv, Yv, _), _ = data
    P = np.random.default_rng(1).uniform(0.05, 0.95, Yv.shape)
    costs = np.array([1.0, 3.0, 10.0][: Yv.shape[1]])
    full = np.tile(costs, (len(Yv), 1))
    assert routing_aiq(P, Yv, full) == pytest.approx(routing_aiq(P, Yv, costs))
    assert routing_aiq(P, Yv, costs, full) == pytest.approx(routing_aiq(P, Yv, costs))
    assert routing_aiq(P, Yv, costs, full * np.linspace(0.1, 3, len(Yv))[:, None]) != pytest.approx(
        routing_aiq(P, Yv, costs))
    with pytest.raises(ValueError, match="realized costs have shape"):
        routing_aiq(P, Yv, costs, full[:3])
