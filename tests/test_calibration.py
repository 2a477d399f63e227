"""Calibration scores by hand, temperature / isotonic calibration with a known answer, the wrapper, the train
pipeline's calibration block (kronaxis_lab/classifiers/calibration.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit, logit

from kronaxis_lab.classifiers.base import Classifier, as_queries, check_fit_inputs, load_classifier
from kronaxis_lab.classifiers.calibration import (
    CalibratedClassifier,
    IsotonicCalibration,
    TemperatureScaling,
    brier_score,
    calibration_report,
    expected_calibration_error,
    log_loss,
)
from kronaxis_lab.classifiers.tfidf import TfidfLogRegRouter
from tests.conftest import compose
from tests.test_train_pipeline import save_learnable


def test_scores_by_hand():
    p = np.array([0.1, 0.12, 0.15, 0.75, 0.9, 0.95])
    y = np.array([0, 1, 1, 1, 1, np.nan])  # the NaN (p = 0.95) is unobserved: masked everywhere
    # 15 bins of width 1/15: 0.1, 0.12 → bin 1; 0.15 → bin 2; 0.75 → bin 11; 0.9 → bin 13
    # bin 1: |mean y − mean p| = |0.5 − 0.11| = 0.39 (2 of 5 rows); then 0.85, 0.25, 0.1 (1 row each)
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.39 + 0.85 + 0.25 + 0.1) / 5)
    assert brier_score(p, y) == pytest.approx((0.01 + 0.88**2 + 0.85**2 + 0.25**2 + 0.01) / 5)
    assert log_loss(p, y) == pytest.approx(-(2 * math.log(0.9) + math.log(0.12) + math.log(0.15) + math.log(0.75)) / 5)
    assert expected_calibration_error([1.0], [1.0]) == 0.0  # p = 1 falls in the last bin
    assert expected_calibration_error([0.3, 0.3], [0.3, 0.3]) == pytest.approx(0.0)  # soft targets kept
    assert brier_score([0.5], [np.nan]) is None and log_loss([0.5], [np.nan]) is None


def _overconfident(n, seed, sharpness=(3.0, 1.0)):
    """True success rates q ~ U(0.05, 0.95), outcomes ~ Bernoulli(q); model j predicts σ(k_j · logit q)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, size=(n, len(sharpness)))
    Y = (rng.random(q.shape) < q).astype(float)
    return expit(logit(q) * np.asarray(sharpness)), Y, q


def test_temperature_scaling_recovers_the_sharpness_and_reduces_ece():
    P, Y, _ = _overconfident(6000, 0)
    Pt, Yt, _ = _overconfident(6000, 1)
    Y[::7, 0] = np.nan  # masked: no effect beyond fewer rows
    cal = TemperatureScaling().fit(P, Y)
    np.testing.assert_allclose(cal.temperature_, [3.0, 1.0], rtol=0.1)
    before, after = (expected_calibration_error(Q[:, 0], Yt[:, 0]) for Q in (Pt, cal.transform(Pt)))
    assert before > 0.08 and after < before / 3
    assert np.array_equal(np.argsort(cal.transform(Pt)[:, 0]), np.argsort(Pt[:, 0]))  # ranking unchanged
    again = TemperatureScaling.from_state(cal.state())
    np.testing.assert_array_equal(again.transform(Pt), cal.transform(Pt))


def test_isotonic_reduces_ece_and_round_trips():
    P, Y, _ = _overconfident(6000, 0)
    Pt, Yt, _ = _overconfident(6000, 1)
    cal = IsotonicCalibration().fit(P, Y)
    Q = cal.transform(Pt)
    assert ((Q >= 0) & (Q <= 1)).all()
    assert expected_calibration_error(Q[:, 0], Yt[:, 0]) < expected_calibration_error(Pt[:, 0], Yt[:, 0]) / 3
    np.testing.assert_array_equal(IsotonicCalibration.from_state(cal.state()).transform(Pt), Q)


def test_report_scores_raw_and_cross_fitted_calibration():
    P, Y, _ = _overconfident(2000, 0)
    rep = calibration_report(P, Y, ["sharp", "fine"])
    sharp, fine = rep["per_model"]["sharp"], rep["per_model"]["fine"]
    assert sharp["temperature"]["ece"] < sharp["raw"]["ece"] / 2
    assert sharp["temperature"]["log_loss"] < sharp["raw"]["log_loss"]
    assert abs(fine["temperature"]["brier"] - fine["raw"]["brier"]) < 0.005  # already calibrated: ~no change
    assert rep["applied"] is None and rep["n_bins"] == 15
    assert rep["mean"]["raw"]["ece"] == pytest.approx((sharp["raw"]["ece"] + fine["raw"]["ece"]) / 2)


class Sharp(Classifier):
    """Test base: a query 'q=0.73 ...' gets P̂_j = σ(k_j · logit 0.73), over-confident where k_j > 1."""

    def __init__(self, sharpness: tuple[float, ...] = (3.0, 1.0)) -> None:
        self.sharpness = sharpness

    def fit(self, queries, targets, model_names, val_queries=None, val_targets=None, *, model_costs=None):
        self.model_names_ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets).model_names
        return self

    def predict_proba(self, queries):
        q = np.array([float(t.split()[0][2:]) for t in as_queries(queries)])
        return expit(logit(q)[:, None] * np.asarray(self.sharpness)[None, :]).reshape(len(q), len(self.sharpness))

    def save_state(self, directory):
        pass

    def load_state(self, directory):
        pass


def _texts(q):
    return [f"q={v:.6f} query {i}" for i, v in enumerate(q[:, 0])]


def test_calibrated_classifier_fits_on_val_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    q = rng.uniform(0.05, 0.95, size=(4000, 1)).repeat(2, axis=1)  # both models share the true rate
    Y = (rng.random(q.shape) < q).astype(float)
    tr, va, te = slice(0, 1000), slice(1000, 3000), slice(3000, 4000)
    clf = CalibratedClassifier(base=Sharp(), method="temperature")
    clf.fit(_texts(q[tr]), Y[tr], ["sharp", "fine"], _texts(q[va]), Y[va])
    np.testing.assert_allclose(clf.calibrator_.temperature_, [3.0, 1.0], rtol=0.15)
    P_raw, P = clf.base.predict_proba(_texts(q[te])), clf.predict_proba(_texts(q[te]))
    assert expected_calibration_error(P[:, 0], Y[te, 0]) < expected_calibration_error(P_raw[:, 0], Y[te, 0]) / 2
    assert clf.calibration_report_["applied"] == "temperature"

    again = load_classifier(clf.save_pretrained(tmp_path / "c"))
    assert isinstance(again, CalibratedClassifier) and isinstance(again.base, Sharp)
    assert (tmp_path / "c/base/classifier.json").is_file() and (tmp_path / "c/calibration.npz").is_file()
    np.testing.assert_array_equal(again.predict_proba(_texts(q[te])), P)
    assert again.get_config() == {"method": "temperature"} and again.predict_proba([]).shape == (0, 2)
    with pytest.raises(ValueError, match="no val data"):
        CalibratedClassifier(base=Sharp()).fit(_texts(q[tr]), Y[tr], ["sharp", "fine"])
    with pytest.raises(ValueError, match="not one of"):
        CalibratedClassifier(base=Sharp(), method="platt").fit(_texts(q[tr]), Y[tr], ["a", "b"], _texts(q[va]), Y[va])


def test_train_pipeline_reports_ece_brier_and_applies_calibrate(tmp_path):
    from kronaxis_lab.pipelines.train import run as train_run

    save_learnable(tmp_path / "ds")
    over = ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "classifier=tfidf_logreg", "classifier.show_progress=false"]
    plain = train_run(compose("train", over, tmp_path / "plain"))
    m = json.loads((tmp_path / "plain/train_metrics.json").read_text())["calibration"]
    assert m["applied"] is None and set(m["per_model"]) == {"weak", "strong"}
    for variant in ("raw", "temperature", "isotonic"):
        assert 0 <= m["per_model"]["weak"][variant]["ece"] <= 1 and 0 <= m["per_model"]["weak"][variant]["brier"] <= 1
    assert isinstance(plain["classifier"], TfidfLogRegRouter)

    cal = train_run(compose("train", [*over, "calibrate=temperature"], tmp_path / "cal"))
    m2 = json.loads((tmp_path / "cal/train_metrics.json").read_text())
    assert m2["classifier"] == "CalibratedClassifier" and m2["calibration"]["applied"] == "temperature"
    assert m2["calibration"]["per_model"]["weak"]["raw"] == m["per_model"]["weak"]["raw"]  # raw = the base's P̂
    loaded = load_classifier(cal["classifier_dir"])
    assert isinstance(loaded, CalibratedClassifier) and isinstance(loaded.base, TfidfLogRegRouter)
    texts = ["prove the theorem about cats number 1", "say hello to tea number 2"]
    np.testing.assert_allclose(loaded.predict_proba(texts),
                               loaded.calibrator_.transform(loaded.base.predict_proba(texts)))
