"""TF-IDF + one logistic regression per model: the classic text-classification baseline.

    x = TfidfVectorizer(**tfidf)(q);   P̂_j(q) = σ(w_j·x + b_j)

Soft labels y ∈ [0, 1] (`soft_labels: weights`, the default): every training query appears twice, as a
positive with sample weight y_ij and as a negative with weight 1 − y_ij. The weighted log-loss then equals
the cross-entropy against the soft target, −[y log p + (1 − y) log(1 − p)], so fractional grades are used
exactly; for 0/1 labels it is the ordinary fit. `soft_labels: threshold` instead fits on 1[y ≥ threshold].
NaN targets (outcome not observed) are left out of that model's fit. A model whose targets are all one
class gets a constant prediction (its weighted success rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays, save_tfidf_vectorizer

from .base import Classifier, as_queries, check_fit_inputs, to_plain

STATE_FILE = "tfidf_logreg.joblib"


def tfidf_vectorizer(config: Mapping[str, Any] | None):
    """An unfitted sklearn TfidfVectorizer from a config node (YAML lists → the tuples sklearn wants)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    kw = to_plain(config) or {}
    if "ngram_range" in kw:
        kw["ngram_range"] = tuple(kw["ngram_range"])
    return TfidfVectorizer(**kw)


class TfidfLogRegRouter(Classifier):
    def __init__(
        self,
        tfidf: Mapping[str, Any] | None = None,
        C: float = 1.0,
        max_iter: int = 1000,
        class_weight: str | None = None,
        soft_labels: str = "weights",
        threshold: float = 0.5,
        show_progress: bool = True,
    ) -> None:
        self.tfidf = tfidf
        self.C = C
        self.max_iter = max_iter
        self.class_weight = class_weight
        self.soft_labels = soft_labels
        self.threshold = threshold
        self.show_progress = show_progress

    def _vectorizer(self):
        return tfidf_vectorizer(self.tfidf)

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "TfidfLogRegRouter":
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression

        if self.soft_labels not in ("weights", "threshold"):
            raise ValueError(f"soft_labels '{self.soft_labels}' is not one of weights, threshold")
        queries, y, model_names, _, _ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("TfidfLogRegRouter.fit: no training queries")
        self.model_names_ = model_names
        self.vectorizer_ = self._vectorizer().fit(queries)
        X = self.vectorizer_.transform(queries)
        self.models_: list[Any] = []
        for j in tqdm(range(len(model_names)), desc="tfidf-logreg", disable=not self.show_progress):
            obs = np.isfinite(y[:, j])
            Xj, yj = X[obs], y[obs, j]
            if self.soft_labels == "threshold":
                Xs, labels, w = Xj, (yj >= self.threshold).astype(int), np.ones(len(yj))
            else:
                Xs = sparse.vstack([Xj, Xj]).tocsr()
                labels = np.r_[np.ones(len(yj), int), np.zeros(len(yj), int)]
                w = np.r_[yj, 1.0 - yj]
            keep = w > 0
            classes = np.unique(labels[keep])
            if len(classes) < 2:  # nothing to separate: predict the observed rate
                rate = float(np.sum(w * labels) / np.sum(w)) if np.sum(w) > 0 else 0.5
                self.models_.append(rate)
                continue
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight)
            self.models_.append(clf.fit(Xs[keep], labels[keep], sample_weight=w[keep]))
        return self

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        X = self.vectorizer_.transform(queries)
        cols = [
            np.full(len(queries), m) if isinstance(m, float) else m.predict_proba(X)[:, list(m.classes_).index(1)]
            for m in self.models_
        ]
        return np.stack(cols, axis=1)

    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.TfidfLinearRuntime`): the vectorizer as JSON, the
        regressions as arrays (weights.npz: coef (m, d), intercept (m,), constant (m,) = the rate of a
        one-class model, NaN where a regression was fitted). No pickle."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        d = save_tfidf_vectorizer(self.vectorizer_, directory / "vectorizer.json")["n_features"]
        m = len(self.models_)
        coef, intercept, constant = np.zeros((m, d)), np.zeros(m), np.full(m, np.nan)
        for j, model in enumerate(self.models_):
            if isinstance(model, float):
                constant[j] = model
            else:  # binary: P(1) = σ(x·w + b), classes_ = [0, 1]
                coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        save_arrays(directory / "weights.npz", coef=coef, intercept=intercept, constant=constant)
        return {"kind": "kronaxis_lab.export.runtimes.TfidfLinearRuntime", "label_order": list(self.model_names_),
                "files": {"vectorizer": "vectorizer.json", "weights": "weights.npz"}}

    def save_state(self, directory: Path) -> None:
        import joblib

        joblib.dump({"vectorizer": self.vectorizer_, "models": self.models_}, directory / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        import joblib

        # joblib/pickle: only load directories you trust (as with any pickled sklearn model)
        state = joblib.load(directory / STATE_FILE)
        self.vectorizer_, self.models_ = state["vectorizer"], state["models"]
