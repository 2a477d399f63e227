"""Cluster prior: the labelled per-task prior without the label — tasks found by clustering the query text.

The labelled prior (kronaxis_lab/routing/routers.py `PriorPredictor`) predicts each model's success rate on
the query's task, shrunk toward the model's overall rate. It wins where the task explains most of the
variance (LLMRouter: 14 tasks), but a live query carries no task label. Here the task is a latent cluster:

    x = f(q)                              MiniLM embedding (`features: embedding`) or TF-IDF → SVD (`tfidf`),
                                          rows L2-normalised
    μ_1..μ_K = KMeans(x_train)            hard training partition c(i)
    g_j      = Σ_i m_ij y_ij / Σ_i m_ij                                  (m_ij = 1 where y_ij is observed)
    r_cj     = (Σ_{i: c(i)=c} m_ij y_ij + s·g_j) / (Σ_{i: c(i)=c} m_ij + s)      s = `smoothing` pseudo-counts
    P̂_j(q)   = Σ_c a_c(q) · r_cj,   a(q) = softmax_c(−‖x − μ_c‖² / T)   (T = 0: a = one-hot nearest centroid)

With hard assignment and clusters equal to the tasks this is exactly `PriorPredictor` (tests check it).
Soft assignment makes P̂ smooth near cluster borders. With validation data K is chosen from
`n_clusters_grid` and T fitted (bounded search over log T, or T = 0 when hard is better) by val log-loss;
without it K = `n_clusters` and T = `temperature` (null: hard). NaN targets are masked: they add to neither
the sums nor the counts. `cluster_proba` exposes a(q), so other routers can use the clusters as features.

State: centroids, rates and the global rate in `cluster_prior.npz`, the selection in `cluster_prior.json`
(no pickle); with TF-IDF features the fitted vectorizer + SVD in `tfidf_svd.joblib` (pickle: trusted dirs only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays, save_tfidf_vectorizer

from .base import Classifier, as_queries, check_fit_inputs
from .calibration import log_loss
from .embedding import Embedder, UsesEmbedder
from .tfidf import tfidf_vectorizer

log = logging.getLogger(__name__)

STATE_FILE = "cluster_prior.npz"
META_FILE = "cluster_prior.json"
TFIDF_FILE = "tfidf_svd.joblib"
FEATURES = ("embedding", "tfidf")
LOG_T_BOUNDS = (np.log(1e-4), np.log(10.0))  # squared distances of unit vectors lie in [0, 4]


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def fit_temperature(assign, scores: np.ndarray, rates: np.ndarray, Yv: np.ndarray,
                    log_bounds: tuple[float, float]) -> tuple[float, float]:
    """(T, val log-loss) of P̂ = assign(scores, T) @ rates: a bounded search over log T, or T = 0 (hard
    assignment) when that is better. Shared by the cluster prior (scores = −distance²) and the task prior (logits)."""
    hard = log_loss(assign(scores, 0.0) @ rates, Yv)
    res = minimize_scalar(lambda t: log_loss(assign(scores, float(np.exp(t))) @ rates, Yv),
                          method="bounded", bounds=log_bounds, options={"xatol": 1e-3})
    return (float(np.exp(res.x)), float(res.fun)) if res.fun < hard else (0.0, hard)


def cluster_rates(labels: np.ndarray, y: np.ndarray, n_clusters: int,
                  smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(r (K, m), g (m,)): per-cluster success rates shrunk toward the global rate g (module docstring)."""
    obs = np.isfinite(y)
    y0 = np.where(obs, y, 0.0)
    n_obs = obs.sum(axis=0)
    g = np.where(n_obs > 0, y0.sum(axis=0) / np.maximum(n_obs, 1), 0.5)  # a never-observed model: 0.5
    onehot = np.zeros((len(labels), n_clusters))
    onehot[np.arange(len(labels)), labels] = 1.0
    sums, counts = onehot.T @ y0, onehot.T @ obs.astype(float)
    return (sums + smoothing * g) / (counts + smoothing), g


def soft_assign(D2: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) cluster weights from squared distances: softmax(−D²/T), or one-hot nearest when T = 0."""
    A = np.zeros_like(D2)
    if temperature <= 0:
        A[np.arange(len(D2)), D2.argmin(axis=1)] = 1.0
        return A
    logits = -(D2 - D2.min(axis=1, keepdims=True)) / temperature
    A = np.exp(logits)
    return A / A.sum(axis=1, keepdims=True)


class ClusterPriorRouter(UsesEmbedder, Classifier):
    def __init__(
        self,
        features: str = "embedding",
        n_clusters: int = 16,
        n_clusters_grid: Sequence[int] | None = None,
        smoothing: float = 10.0,
        assignment: str = "soft",
        temperature: float | None = None,
        n_init: int = 4,
        max_iter: int = 300,
        seed: int = 0,
        tfidf: Mapping[str, Any] | None = None,
        svd_components: int | None = 100,
        embedding: Mapping[str, Any] | Embedder | None = None,
        show_progress: bool = True,
    ) -> None:
        self.features = features
        self.n_clusters = n_clusters
        self.n_clusters_grid = n_clusters_grid
        self.smoothing = smoothing
        self.assignment = assignment
        self.temperature = temperature
        self.n_init = n_init
        self.max_iter = max_iter
        self.seed = seed
        self.tfidf = tfidf
        self.svd_components = svd_components
        self.embedding = embedding
        self.show_progress = show_progress

    # -- features ---------------------------------------------------------------------------------
    def _fit_text_features(self, queries: list[str]) -> None:
        if self.features == "embedding":
            return
        from sklearn.decomposition import TruncatedSVD

        self.vectorizer_ = tfidf_vectorizer(self.tfidf).fit(queries)
        n_terms = len(self.vectorizer_.vocabulary_)
        dim = min(int(self.svd_components), n_terms - 1) if self.svd_components else 0
        X = self.vectorizer_.transform(queries)
        self.svd_ = TruncatedSVD(dim, random_state=self.seed).fit(X) if dim >= 1 else None

    def features_of(self, queries: list[str]) -> np.ndarray:
        """(n, d) L2-normalised feature rows of `queries` (the space the clusters live in)."""
        if self.features == "embedding":
            return _normalise(self.embedder.encode(queries))
        X = self.vectorizer_.transform(queries)
        return _normalise(self.svd_.transform(X) if self.svd_ is not None else X.toarray())

    def _sq_dist(self, X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        D2 = (X**2).sum(1)[:, None] - 2 * X @ centroids.T + (centroids**2).sum(1)[None, :]
        return np.maximum(D2, 0.0)

    # -- fit --------------------------------------------------------------------------------------
    def _fit_temperature(self, D2: np.ndarray, rates: np.ndarray, Yv: np.ndarray) -> tuple[float, float]:
        return fit_temperature(soft_assign, D2, rates, Yv, LOG_T_BOUNDS)

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "ClusterPriorRouter":
        from sklearn.cluster import KMeans

        if self.features not in FEATURES:
            raise ValueError(f"features '{self.features}' is not one of {FEATURES}")
        if self.assignment not in ("soft", "hard"):
            raise ValueError(f"assignment '{self.assignment}' is not one of soft, hard")
        queries, y, model_names, vq, vy = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("ClusterPriorRouter.fit: no training queries")
        self.model_names_ = model_names
        self._fit_text_features(queries)
        X = self.features_of(queries)
        n_distinct = len(np.unique(X.round(6), axis=0))
        has_val = bool(vq) and bool(np.isfinite(vy).any())
        ks = self.n_clusters_grid if has_val and self.n_clusters_grid else [self.n_clusters]
        grid = sorted({max(1, min(int(k), n_distinct)) for k in ks})
        Xv = self.features_of(vq) if has_val else None
        fixed_t = 0.0 if self.assignment == "hard" else self.temperature  # None: fitted on val

        best, self.selection_ = None, []
        for k in tqdm(grid, desc="cluster-prior", disable=not self.show_progress):
            km = KMeans(n_clusters=k, n_init=self.n_init, max_iter=self.max_iter, random_state=self.seed).fit(X)
            centroids = km.cluster_centers_.astype(np.float64)
            rates, g = cluster_rates(km.labels_, y, k, float(self.smoothing))
            row: dict[str, Any] = {"n_clusters": k, "temperature": float(fixed_t or 0.0)}
            if Xv is not None:
                D2v = self._sq_dist(Xv, centroids)
                if fixed_t is None:
                    row["temperature"], row["val_log_loss"] = self._fit_temperature(D2v, rates, vy)
                else:
                    row["val_log_loss"] = log_loss(soft_assign(D2v, row["temperature"]) @ rates, vy)
            self.selection_.append(row)
            if best is None or row.get("val_log_loss", 0.0) < best[0].get("val_log_loss", 0.0):
                best = (row, centroids, rates, g)
        row, self.centroids_, self.rates_, self.global_rate_ = best
        self.n_clusters_, self.temperature_ = int(row["n_clusters"]), float(row["temperature"])
        log.info("cluster prior: K=%d, T=%g (val log-loss %s)", self.n_clusters_, self.temperature_,
                 row.get("val_log_loss"))
        return self

    # -- predict ----------------------------------------------------------------------------------
    def cluster_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        """(n, K) soft cluster membership a(q) (rows sum to 1; one-hot under hard assignment)."""
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, self.n_clusters_))
        return soft_assign(self._sq_dist(self.features_of(queries), self.centroids_), self.temperature_)

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        return np.clip(self.cluster_proba(queries) @ self.rates_, 0.0, 1.0)

    # -- state ------------------------------------------------------------------------------------
    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """`ClusterPriorRouter.export_runtime` → `ClusterPriorRuntime`: centroids + rates, and the features' writer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        node: dict[str, Any] = {"kind": "kronaxis_lab.export.runtimes.ClusterPriorRuntime",
                                "label_order": list(self.model_names_), "features": self.features,
                                "temperature": float(self.temperature_), "files": {"clusters": "clusters.npz"},
                                "nodes": {}}
        arrays = {"centroids": self.centroids_, "rates": self.rates_}
        if self.features == "embedding":
            node["nodes"]["encoder"] = self.embedder.export_runtime(directory / "encoder", **graph_options)
        else:
            save_tfidf_vectorizer(self.vectorizer_, directory / "vectorizer.json")
            node["files"]["vectorizer"] = "vectorizer.json"
            if self.svd_ is not None:
                arrays["components"] = self.svd_.components_
        save_arrays(directory / "clusters.npz", **arrays)
        return node

    def save_state(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, centroids=self.centroids_, rates=self.rates_, global_rate=self.global_rate_)
        meta = {"n_clusters": self.n_clusters_, "temperature": self.temperature_, "selection": self.selection_}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        if self.features == "tfidf":
            import joblib

            joblib.dump({"vectorizer": self.vectorizer_, "svd": self.svd_}, directory / TFIDF_FILE)

    def load_state(self, directory: Path) -> None:
        with np.load(directory / STATE_FILE, allow_pickle=False) as z:
            self.centroids_, self.rates_, self.global_rate_ = z["centroids"], z["rates"], z["global_rate"]
        meta = json.loads((directory / META_FILE).read_text())
        self.n_clusters_, self.temperature_ = int(meta["n_clusters"]), float(meta["temperature"])
        self.selection_ = meta["selection"]
        if self.features == "tfidf":
            import joblib

            # joblib/pickle: only load directories you trust (as with any pickled sklearn model)
            state = joblib.load(directory / TFIDF_FILE)
            self.vectorizer_, self.svd_ = state["vectorizer"], state["svd"]
