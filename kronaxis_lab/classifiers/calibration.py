"""Per-model probability calibration and its scores: the λ policy reads P̂_j as a probability, so it should be one.

    clf = CalibratedClassifier(base=TfidfLogRegRouter(), method="temperature").fit(q, Y, names, vq, vY)
    report = calibration_report(P_val, Y_val, names)       # ECE / Brier / log-loss, raw and calibrated

Scores, per model j over its observed entries (NaN targets masked, soft targets y ∈ [0, 1] kept):

    Brier_j   = mean_i (p_ij − y_ij)²
    LogLoss_j = −mean_i [y_ij log p_ij + (1 − y_ij) log(1 − p_ij)]        (p clipped to [1e-6, 1 − 1e-6])
    ECE_j     = Σ_b (n_b / n) · |mean_{i∈b} y_ij − mean_{i∈b} p_ij|        b: 15 equal-width bins of p on [0, 1]

ECE is Guo et al. 2017, "On Calibration of Modern Neural Networks" (arXiv:1706.04599v2, eq. 3, after Naeini
et al. 2015) with one departure: it is the binary reliability of each model's success probability, not the
top-label confidence of a multi-class prediction. A bin holds p ∈ [b/15, (b+1)/15); p = 1 falls in the last.

Calibrators, one map per model, fitted on held-out (val) predictions by log-loss:

- `temperature` (Guo et al. 2017, §4.2): p' = σ(logit(p) / T_j), one parameter per model, T_j ∈ [0.05, 20];
  T > 1 softens an over-confident model, T < 1 sharpens an under-confident one; the ranking is unchanged.
- `isotonic` (Zadrozny & Elkan 2002): the monotone step fit of y on p (sklearn IsotonicRegression), applied
  by linear interpolation between its knots and clipped at the ends, as sklearn's `predict` does.

`CalibratedClassifier` wraps any classifier (the train pipeline's `calibrate:` key, configs/train.yaml): the
base is fitted as usual, then the calibrator on the base's val predictions. Its state is the base in a `base/`
sub-directory (its own save_pretrained) plus `calibration.npz`; no pickle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from .base import Classifier, as_queries, check_fit_inputs, load_classifier

log = logging.getLogger(__name__)

STATE_FILE = "calibration.npz"
METHODS = ("temperature", "isotonic")
N_BINS = 15  # Guo et al.'s bin count
EPS = 1e-6  # probability clip of the log-loss and of logit()
T_BOUNDS = (0.05, 20.0)


# -- scores ----------------------------------------------------------------------------------------
def _masked(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(p, float).ravel(), np.asarray(y, float).ravel()
    obs = np.isfinite(y)
    return p[obs], y[obs]


def brier_score(p: np.ndarray, y: np.ndarray) -> float | None:
    """Mean (p − y)² over observed entries; None when nothing is observed."""
    p, y = _masked(p, y)
    return float(np.mean((p - y) ** 2)) if len(y) else None


def log_loss(p: np.ndarray, y: np.ndarray) -> float | None:
    """Mean soft cross-entropy over observed entries (p clipped to [EPS, 1 − EPS]); None when nothing is observed."""
    p, y = _masked(p, y)
    if not len(y):
        return None
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float | None:
    """Σ_b (n_b / n) |ȳ_b − p̄_b| over `n_bins` equal-width bins of p (see the module docstring)."""
    p, y = _masked(p, y)
    if not len(y):
        return None
    b = np.minimum((np.clip(p, 0, 1) * n_bins).astype(int), n_bins - 1)
    gap = np.abs(np.bincount(b, weights=y, minlength=n_bins) - np.bincount(b, weights=p, minlength=n_bins))
    return float(gap.sum() / len(y))  # Σ_b (n_b/n)·|Σy/n_b − Σp/n_b| = Σ_b |Σy − Σp| / n


def scores(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, float | None]:
    return {"ece": expected_calibration_error(p, y, n_bins), "brier": brier_score(p, y), "log_loss": log_loss(p, y)}


# -- calibrators -----------------------------------------------------------------------------------
def _logits(P: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(P, float), EPS, 1 - EPS))


class TemperatureScaling:
    """p'_j = σ(logit(p_j) / T_j), T_j fitted per model by log-loss (bounded 1-D search over log T)."""

    method = "temperature"

    def fit(self, P: np.ndarray, Y: np.ndarray) -> "TemperatureScaling":
        Z = _logits(P)
        self.temperature_ = np.ones(Z.shape[1])
        for j in range(Z.shape[1]):
            obs = np.isfinite(Y[:, j])
            z, y = Z[obs, j], Y[obs, j]
            if len(y) < 2 or np.ptp(z) == 0:  # a constant prediction has no scale to fit
                continue
            res = minimize_scalar(lambda t, z=z, y=y: log_loss(expit(z / np.exp(t)), y), method="bounded",
                                  bounds=tuple(np.log(T_BOUNDS)), options={"xatol": 1e-4})
            self.temperature_[j] = float(np.exp(res.x))
        return self

    def transform(self, P: np.ndarray) -> np.ndarray:
        return expit(_logits(P) / self.temperature_)

    def state(self) -> dict[str, np.ndarray]:
        return {"temperature": self.temperature_}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "TemperatureScaling":
        obj = cls()
        obj.temperature_ = np.asarray(state["temperature"], float)
        return obj


class IsotonicCalibration:
    """Per-model isotonic map p → E[y | p], kept as knots (x_j, y_j) and applied with np.interp."""

    method = "isotonic"

    def fit(self, P: np.ndarray, Y: np.ndarray) -> "IsotonicCalibration":
        from sklearn.isotonic import IsotonicRegression

        self.knots_: list[tuple[np.ndarray, np.ndarray]] = []
        for j in range(P.shape[1]):
            obs = np.isfinite(Y[:, j])
            if obs.sum() < 2:  # nothing to fit: identity
                self.knots_.append((np.array([0.0, 1.0]), np.array([0.0, 1.0])))
                continue
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(P[obs, j], Y[obs, j])
            self.knots_.append((iso.X_thresholds_.astype(float), iso.y_thresholds_.astype(float)))
        return self

    def transform(self, P: np.ndarray) -> np.ndarray:
        P = np.asarray(P, float)
        return np.stack([np.interp(P[:, j], x, y) for j, (x, y) in enumerate(self.knots_)], axis=1) \
            if P.shape[1] else P.copy()

    def state(self) -> dict[str, np.ndarray]:
        return {f"{axis}_{j}": v for j, knot in enumerate(self.knots_) for axis, v in zip("xy", knot)}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> "IsotonicCalibration":
        obj = cls()
        n = sum(1 for k in state if k.startswith("x_"))
        obj.knots_ = [(np.asarray(state[f"x_{j}"], float), np.asarray(state[f"y_{j}"], float)) for j in range(n)]
        return obj


CALIBRATORS = {c.method: c for c in (TemperatureScaling, IsotonicCalibration)}


def make_calibrator(method: str):
    if method not in CALIBRATORS:
        raise ValueError(f"calibration method '{method}' is not one of {list(CALIBRATORS)}")
    return CALIBRATORS[method]()


# -- report ----------------------------------------------------------------------------------------
def cross_fitted(method: str, P: np.ndarray, Y: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Calibrated P̂ of each held-out row from a calibrator fitted on the other folds: an honest estimate of
    what calibration fitted on all of `P` does to unseen queries (scoring the fit on its own data flatters it)."""
    n = len(P)
    out = np.asarray(P, float).copy()
    if n < 2 * n_folds:
        return make_calibrator(method).fit(P, Y).transform(P)  # too few rows to hold any out: in-sample
    fold = np.random.default_rng(seed).permutation(n) % n_folds
    for f in range(n_folds):
        held = fold == f
        out[held] = make_calibrator(method).fit(P[~held], Y[~held]).transform(P[held])
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def calibration_report(P: np.ndarray, Y: np.ndarray, model_names: Sequence[str], method: str | None = None,
                       n_bins: int = N_BINS, n_folds: int = 5) -> dict[str, Any]:
    """ECE / Brier / log-loss per model of the raw P̂ and of each calibration method, on held-out (val) rows.

    `P` must be the uncalibrated predictions; a method's numbers are cross-fitted over `n_folds` folds of these
    rows (`cross_fitted`). `method` names the one the classifier applies (None: none; the others are shown
    for comparison)."""
    P, Y = np.asarray(P, float), np.asarray(Y, float)
    variants = {"raw": P, **{m: cross_fitted(m, P, Y, n_folds) for m in METHODS}}
    per_model = {name: {v: scores(Q[:, j], Y[:, j], n_bins) for v, Q in variants.items()}
                 for j, name in enumerate(model_names)}
    mean = {v: {k: _mean([pm[v][k] for pm in per_model.values()]) for k in ("ece", "brier", "log_loss")}
            for v in variants}
    return {"applied": method, "n_bins": n_bins, "n": len(P),
            "note": f"val; calibrated variants cross-fitted over {n_folds} folds of val", "mean": mean,
            "per_model": per_model}


# -- the wrapper -----------------------------------------------------------------------------------
class CalibratedClassifier(Classifier):
    """Any classifier followed by a per-model calibrator fitted on its val predictions (`method`)."""

    not_in_config = ("base",)  # saved as the sub-directory base/ by save_state

    def __init__(self, base: Classifier | None = None, method: str = "temperature") -> None:
        self.base = base
        self.method = method

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
        tasks: Sequence[Any] | None = None,
        val_costs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> "CalibratedClassifier":
        """Fit the base on train (val passed on for its early stopping), then the calibrator on val."""
        if self.base is None:
            raise ValueError("CalibratedClassifier needs a base classifier")
        make_calibrator(self.method)  # a bad method fails before training
        queries, y, model_names, vq, vy = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not vq:
            raise ValueError("CalibratedClassifier.fit: calibration is fitted on val, and no val data was given")
        extra = {"tasks": tasks} if self.base.task_labels_column() else {}
        if self.base.wants_val_costs():
            extra["val_costs"] = val_costs
        self.base.fit(queries, y, model_names, vq, vy, model_costs=model_costs, **extra)
        return self.fit_calibration(vq, vy)

    def task_labels_column(self) -> str | None:
        return self.base.task_labels_column() if self.base is not None else None

    def wants_val_costs(self) -> bool:
        return self.base.wants_val_costs() if self.base is not None else False

    def fit_calibration(self, val_queries: Sequence[str], val_targets: np.ndarray) -> "CalibratedClassifier":
        """(Re)fit only the calibrator, on an already fitted base."""
        self.model_names_ = list(self.base.model_names_)
        vq = as_queries(val_queries, "val_queries")
        P = np.asarray(self.base.predict_proba(vq), float)
        Y = np.asarray(val_targets, float)
        self.calibrator_ = make_calibrator(self.method).fit(P, Y)
        self.calibration_report_ = calibration_report(P, Y, self.model_names_, self.method)
        log.info("calibrated %s with %s on %d val queries: mean ECE %.4f → %.4f (cross-fitted)",
                 type(self.base).__name__, self.method, len(vq), self.calibration_report_["mean"]["raw"]["ece"],
                 self.calibration_report_["mean"][self.method]["ece"])
        return self

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        return self.calibrator_.transform(np.asarray(self.base.predict_proba(queries), float))

    def save_state(self, directory: Path) -> None:
        self.base.save_pretrained(directory / "base")
        np.savez(directory / STATE_FILE, **self.calibrator_.state())

    def load_state(self, directory: Path) -> None:
        self.base = load_classifier(directory / "base")
        with np.load(directory / STATE_FILE, allow_pickle=False) as z:
            self.calibrator_ = CALIBRATORS[self.method].from_state({k: z[k] for k in z.files})


def with_calibration(clf: Classifier, method: str | None) -> Classifier:
    """`clf` wrapped in a `CalibratedClassifier` applying `method`, or `clf` itself when `method` is None."""
    return clf if not method else CalibratedClassifier(base=clf, method=str(method))


def val_calibration_metrics(clf: Classifier, P_val: np.ndarray, Y_val: np.ndarray,
                            model_names: Sequence[str]) -> dict[str, Any]:
    """The calibration block of train_metrics.json: a calibrated classifier's own report (raw = its base's val
    P̂), else the report of `P_val` (what each method would do, cross-fitted on val)."""
    if isinstance(clf, CalibratedClassifier):
        return clf.calibration_report_
    return calibration_report(P_val, Y_val, model_names)
