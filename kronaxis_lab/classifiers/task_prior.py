"""Task prior from text: the labelled per-task prior, with the task read off the query text.

The labelled prior (kronaxis_lab/routing/routers.py `PriorPredictor`) predicts model j's success rate on the
query's task, shrunk toward j's overall rate; it reads the `task` label, which live traffic lacks. Here the
train split's task labels are training data only, and prediction reads the text alone:

    p(t | q) = softmax_t((w_t · x(q) + b_t) / T)     x = TF-IDF(q); multinomial L2 logistic regression on the
                                                     train (query, task) pairs; T = 0: one-hot argmax
    g_j      = Σ_i m_ij y_ij / Σ_i m_ij                                  (m_ij = 1 where y_ij is observed)
    r_tj     = (Σ_{i: t(i)=t} m_ij y_ij + s·g_j) / (Σ_{i: t(i)=t} m_ij + s)    s = `smoothing` (cluster_rates)
    P̂_j(q)   = clip(Σ_t p(t|q) r_tj, 0, 1)

With a perfect task classifier (p one-hot on the true task) P̂ is exactly `PriorPredictor` (tests check it).
With validation data C comes from `C_grid` and T is fitted (bounded search over log T, or T = 0 when hard is
better), both by the val log-loss of P̂ (val needs outcomes only, no labels; test is never read); without
val: C = `C`, T = `temperature` (null: 1, the regression's own probabilities).

Where the task labels come from (train only): `fit(..., tasks=[...])`, one label per train query; kronaxis-train
passes the dataset's `task_column` (`task_labels_column`), the ensemble forwards it to this member. Without
labels (a dataset with no such column) the labels are `fallback_clusters` KMeans clusters of the TF-IDF → SVD
text (a hard `ClusterPriorRouter` partition) and a warning is logged; `label_source_` records which ran.

State: coef, intercept, rates, global rate in `task_prior.npz`, the rest in `task_prior.json`, the fitted
vectorizer in `tfidf.joblib` (pickle: trusted dirs only). Export: `TaskPriorRuntime` (vectorizer.json +
task_prior.npz, no pickle), the same maths bit for bit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays, save_tfidf_vectorizer
from kronaxis_lab.export.runtimes import BundleRuntime

from .base import Classifier, ClassifierInputError, as_queries, check_fit_inputs
from .calibration import log_loss
from .cluster_prior import ClusterPriorRouter, cluster_rates, fit_temperature
from .tfidf import tfidf_vectorizer

log = logging.getLogger(__name__)

STATE_FILE = "task_prior.npz"
META_FILE = "task_prior.json"
TFIDF_FILE = "tfidf.joblib"
LOG_T_BOUNDS = (np.log(1e-2), np.log(1e2))  # on logits of an L2 regression (|logit| ~ 1..10)


def task_weights(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) p(t|q) from the regression's logits: softmax(logits / T), or one-hot argmax when T = 0."""
    if temperature <= 0:
        A = np.zeros_like(logits)
        A[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
        return A
    return softmax(logits / temperature, axis=1)


def missing(label: Any) -> bool:
    return label is None or (isinstance(label, float) and label != label)


class TaskPriorRouter(Classifier):
    """P̂_j(q) = Σ_t p(t | text) · r_tj: the labelled task prior with the task predicted from the text."""

    def __init__(
        self,
        tfidf: Mapping[str, Any] | None = None,
        C: float = 10.0,
        C_grid: Sequence[float] | None = None,
        smoothing: float = 10.0,
        temperature: float | None = None,
        task_column: str = "task",
        fallback_clusters: int = 16,
        max_iter: int = 2000,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        self.tfidf = tfidf
        self.C = C
        self.C_grid = C_grid
        self.smoothing = smoothing
        self.temperature = temperature
        self.task_column = task_column
        self.fallback_clusters = fallback_clusters
        self.max_iter = max_iter
        self.seed = seed
        self.show_progress = show_progress

    def task_labels_column(self) -> str | None:
        return self.task_column

    # -- labels -----------------------------------------------------------------------------------
    def _labels(self, queries: list[str], y: np.ndarray, names: list[str], tasks: Sequence[Any] | None) -> list[str]:
        if tasks is not None:
            labels, self.label_source_ = list(tasks), "tasks"
            if len(labels) != len(queries):
                raise ClassifierInputError(f"tasks has {len(labels)} labels for {len(queries)} queries")
        else:
            log.warning("task_prior: no task labels (fit got no tasks=): using %d KMeans "
                        "clusters of the text as tasks", self.fallback_clusters)
            self.label_source_ = "clusters"
            km = ClusterPriorRouter(features="tfidf", n_clusters=self.fallback_clusters, assignment="hard",
                                    smoothing=self.smoothing, tfidf=self.tfidf, seed=self.seed,
                                    show_progress=False).fit(queries, y, names)
            return [f"cluster_{c}" for c in km.cluster_proba(queries).argmax(axis=1)]
        bad = [i for i, t in enumerate(labels) if missing(t)]
        if len(bad) == len(labels):
            raise ClassifierInputError(f"task_prior: every train query lacks its '{self.task_column}' label: "
                                       "the dataset has no task column to learn from")
        if bad:
            raise ClassifierInputError(f"task_prior: {len(bad)} of {len(labels)} train queries have no "
                                       f"'{self.task_column}' label (first: {queries[bad[0]]!r})")
        return [str(t) for t in labels]

    # -- fit --------------------------------------------------------------------------------------
    def _vectorizer(self):
        return tfidf_vectorizer(self.tfidf)

    def _fit_task_model(self, X, idx: np.ndarray, n_tasks: int, C: float) -> tuple[np.ndarray, np.ndarray]:
        """(coef (K, d), intercept (K,)) of the multinomial regression; K = 1: zeros (p = 1)."""
        from sklearn.linear_model import LogisticRegression

        if n_tasks == 1:
            return np.zeros((1, X.shape[1])), np.zeros(1)
        lr = LogisticRegression(C=float(C), max_iter=self.max_iter).fit(X, idx)
        if n_tasks == 2:  # sklearn's binary form: one row for class 1; as logits [0, z] it is the same softmax
            return np.vstack([np.zeros_like(lr.coef_[0]), lr.coef_[0]]), np.r_[0.0, lr.intercept_[0]]
        return lr.coef_, lr.intercept_

    def _fit_temperature(self, logits: np.ndarray, rates: np.ndarray, Yv: np.ndarray) -> tuple[float, float]:
        return fit_temperature(task_weights, logits, rates, Yv, LOG_T_BOUNDS)

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
    ) -> "TaskPriorRouter":
        """`tasks`: the train queries' task labels (module docstring: where labels come from otherwise)."""
        queries, y, model_names, vq, vy = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("TaskPriorRouter.fit: no training queries")
        self.model_names_ = model_names
        labels = self._labels(queries, y, model_names, tasks)
        self.tasks_, idx = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
        self.tasks_ = [str(t) for t in self.tasks_]
        self.rates_, self.global_rate_ = cluster_rates(idx, y, len(self.tasks_), float(self.smoothing))
        self.vectorizer_ = self._vectorizer().fit(queries)
        X = self.vectorizer_.transform(queries)
        has_val = bool(vq) and bool(np.isfinite(vy).any())
        grid = [float(c) for c in self.C_grid] if has_val and self.C_grid else [float(self.C)]
        Xv = self.vectorizer_.transform(vq) if has_val else None
        best, self.selection_ = None, []
        for C in tqdm(grid, desc="task-prior", disable=not self.show_progress):
            coef, intercept = self._fit_task_model(X, idx, len(self.tasks_), C)
            row: dict[str, Any] = {"C": C, "temperature": 1.0 if self.temperature is None else float(self.temperature)}
            if Xv is not None:
                logits = np.asarray(Xv @ coef.T) + intercept
                if self.temperature is None:
                    row["temperature"], row["val_log_loss"] = self._fit_temperature(logits, self.rates_, vy)
                else:
                    row["val_log_loss"] = log_loss(task_weights(logits, row["temperature"]) @ self.rates_, vy)
            self.selection_.append(row)
            if best is None or row.get("val_log_loss", 0.0) < best[0].get("val_log_loss", 0.0):
                best = (row, coef, intercept)
        row, self.coef_, self.intercept_ = best
        self.C_, self.temperature_ = float(row["C"]), float(row["temperature"])
        log.info("task prior: %d tasks from %s, C=%g, T=%g (val log-loss %s)", len(self.tasks_), self.label_source_,
                 self.C_, self.temperature_, row.get("val_log_loss"))
        return self

    # -- predict ----------------------------------------------------------------------------------
    def task_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        """(n, K) p(t|q), columns in `tasks_` order (rows sum to 1; one-hot when T = 0)."""
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.tasks_)))
        logits = np.asarray(self.vectorizer_.transform(queries) @ self.coef_.T) + self.intercept_
        return task_weights(logits, self.temperature_)

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        return np.clip(self.task_proba(queries) @ self.rates_, 0.0, 1.0)

    # -- state ------------------------------------------------------------------------------------
    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """`TaskPriorRouter.export_runtime` → `TaskPriorRuntime`: vectorizer.json + task_prior.npz (no pickle)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tfidf_vectorizer(self.vectorizer_, directory / "vectorizer.json")
        save_arrays(directory / STATE_FILE, coef=self.coef_, intercept=self.intercept_, rates=self.rates_)
        return {"kind": f"{TaskPriorRuntime.__module__}.{TaskPriorRuntime.__qualname__}",
                "label_order": list(self.model_names_), "temperature": float(self.temperature_),
                "tasks": list(self.tasks_), "files": {"vectorizer": "vectorizer.json", "weights": STATE_FILE}}

    def save_state(self, directory: Path) -> None:
        import joblib

        np.savez(directory / STATE_FILE, coef=self.coef_, intercept=self.intercept_, rates=self.rates_,
                 global_rate=self.global_rate_)
        meta = {"tasks": self.tasks_, "C": self.C_, "temperature": self.temperature_,
                "label_source": self.label_source_, "selection": self.selection_}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        joblib.dump(self.vectorizer_, directory / TFIDF_FILE)

    def load_state(self, directory: Path) -> None:
        import joblib

        with np.load(directory / STATE_FILE, allow_pickle=False) as z:
            self.coef_, self.intercept_ = z["coef"], z["intercept"]
            self.rates_, self.global_rate_ = z["rates"], z["global_rate"]
        meta = json.loads((directory / META_FILE).read_text())
        self.tasks_, self.C_, self.temperature_ = list(meta["tasks"]), float(meta["C"]), float(meta["temperature"])
        self.label_source_, self.selection_ = meta["label_source"], meta["selection"]
        # joblib/pickle: only load directories you trust (as with any pickled sklearn model)
        self.vectorizer_ = joblib.load(directory / TFIDF_FILE)


class TaskPriorRuntime(BundleRuntime):
    """`TaskPriorRouter`: TF-IDF from vectorizer.json → logits x·Wᵀ + b → `task_weights` at `temperature` →
    P̂ = clip(p(t|q) · rates, 0, 1) (task_prior.npz: coef (K, d), intercept (K,), rates (K, m))."""

    def __init__(self, directory, node, options=None, where="classifier"):
        super().__init__(directory, node, options, where)
        self.vectorizer = self.tfidf_vectorizer()
        z = self.arrays("weights")
        self.coef, self.intercept, self.rates = z["coef"], z["intercept"], z["rates"]
        self.temperature = float(node.get("temperature", 1.0))
        self.discontinuous = self.temperature <= 0  # hard assignment: P̂ jumps at a task border

    def predict_proba(self, texts, variant):
        if not texts:
            return self.empty()
        logits = np.asarray(self.vectorizer.transform(texts) @ self.coef.T) + self.intercept
        return np.clip(task_weights(logits, self.temperature) @ self.rates, 0.0, 1.0)
