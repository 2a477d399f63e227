"""Embedding kNN router over a vector index of labelled queries and/or hand-written intents.

For a query q with neighbours N_k(q) (cosine similarity s_i = cos(e(q), e(x_i)), best first):

    P̂_j(q) = Σ_{i∈N_k(q), y_ij observed} w_i · y_ij  /  Σ_{i∈N_k(q), y_ij observed} w_i

    uniform:   w_i = 1
    distance:  w_i = 1 / (1 − s_i + eps)          (inverse cosine distance)
    softmax:   w_i = exp(s_i / temperature)

A model with no observed neighbour falls back to its training mean `prior_`.

RouterBench's "KNN" baseline (withmartian/routerbench, routers/knn_router.py) is this router with
`weighting: uniform`, cosine metric and k ∈ {5, 10, 40} (their configs/evaluate_routers.yaml sweep):
`configs/classifier/knn_routerbench.yaml`. RouterBench then picks argmax_j λ·P̂_j − cost_j, which is the
willingness-to-pay policy downstream of this classifier.

Intent mode ("a vector database of categorised intents"): an intent YAML (configs/intents/example.yaml)
lists intent → example queries → preferred tier or model. Each example becomes a row whose target is
1 for models at or above the preferred tier (model order = cheapest first) and 0 below:

    router = KNNRouter.from_intents("configs/intents/example.yaml", model_names=fleet_names)  # no fit needed
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from kronaxis_lab.export.formats import save_arrays

from ._common import resolve_config_path, tier_of_models
from .base import Classifier, as_queries, check_fit_inputs, to_plain
from .embedding import Embedder, UsesEmbedder

STATE_FILE = "knn_state.npz"


# -- vector indexes --------------------------------------------------------------------------------
class Index(Protocol):
    """Nearest-neighbour search by cosine similarity over L2-normalised vectors."""

    def fit(self, vectors: np.ndarray) -> "Index": ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (similarities, indices), both (n_queries, k), most similar first."""
        ...


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ExactIndex:
    """Exact cosine search: one (batch × n) matmul per query batch, top-k by argpartition."""

    def __init__(self, batch_size: int = 1024) -> None:
        self.batch_size = batch_size

    def fit(self, vectors: np.ndarray) -> "ExactIndex":
        self.vectors_ = _l2_normalise(vectors)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _l2_normalise(queries)
        k = min(k, len(self.vectors_))
        sims, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        for a in range(0, len(q), self.batch_size):
            s = q[a : a + self.batch_size] @ self.vectors_.T
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(k), (len(s), 1))
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            idx[a : a + len(s)] = np.take_along_axis(top, order, axis=1)
            sims[a : a + len(s)] = np.take_along_axis(top_s, order, axis=1)
        return sims, idx


class SklearnIndex:
    """scikit-learn NearestNeighbors (cosine); ball-tree/brute choice left to `algorithm`."""

    def __init__(self, algorithm: str = "auto", leaf_size: int = 30, n_jobs: int | None = None) -> None:
        self.algorithm, self.leaf_size, self.n_jobs = algorithm, leaf_size, n_jobs

    def fit(self, vectors: np.ndarray) -> "SklearnIndex":
        from sklearn.neighbors import NearestNeighbors

        self.n_ = len(vectors)
        self.nn_ = NearestNeighbors(
            metric="cosine", algorithm=self.algorithm, leaf_size=self.leaf_size, n_jobs=self.n_jobs
        ).fit(np.asarray(vectors, dtype=np.float32))
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, idx = self.nn_.kneighbors(np.asarray(queries, dtype=np.float32), n_neighbors=min(k, self.n_))
        return (1.0 - dist).astype(np.float32), idx.astype(np.int64)


class FaissIndex:
    """faiss inner-product index on normalised vectors: exact (`IndexFlatIP`) or HNSW when `hnsw_m` is set."""

    def __init__(self, hnsw_m: int | None = None, ef_search: int = 64) -> None:
        self.hnsw_m, self.ef_search = hnsw_m, ef_search

    def fit(self, vectors: np.ndarray) -> "FaissIndex":
        try:
            import faiss
        except ImportError as e:
            raise ImportError("index 'faiss' needs the faiss package (pip install faiss-cpu)") from e
        v = _l2_normalise(vectors)
        if self.hnsw_m:
            self.index_ = faiss.IndexHNSWFlat(v.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index_.hnsw.efSearch = self.ef_search
        else:
            self.index_ = faiss.IndexFlatIP(v.shape[1])
        self.index_.add(v)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, idx = self.index_.search(_l2_normalise(queries), min(k, self.index_.ntotal))
        return sims.astype(np.float32), idx.astype(np.int64)


_INDEX_ALIASES = {"exact": ExactIndex, "sklearn": SklearnIndex, "faiss": FaissIndex}


def make_index(kind: str, **kwargs: Any) -> Index:
    """`exact` | `sklearn` | `faiss`, or a dotted class path implementing `Index`."""
    if kind in _INDEX_ALIASES:
        return _INDEX_ALIASES[kind](**kwargs)
    module, _, name = kind.rpartition(".")
    if not module:
        raise ValueError(f"index '{kind}' is unknown: use one of {sorted(_INDEX_ALIASES)} or a dotted class path")
    return getattr(importlib.import_module(module), name)(**kwargs)


def neighbour_weights(sims: np.ndarray, weighting: str, temperature: float, eps: float) -> np.ndarray:
    """w_i per neighbour (module docstring): uniform, inverse cosine distance, or softmax(s_i / T)."""
    if weighting == "uniform":
        return np.ones_like(sims, dtype=np.float64)
    if weighting == "distance":
        return 1.0 / (np.clip(1.0 - sims.astype(np.float64), 0.0, None) + eps)
    z = sims.astype(np.float64) / temperature
    return np.exp(z - z.max(axis=1, keepdims=True))


def neighbour_average(sims: np.ndarray, idx: np.ndarray, targets: np.ndarray, prior: np.ndarray, weighting: str,
                      temperature: float, eps: float) -> np.ndarray:
    """P̂ (n, m): the weighted mean of the neighbours' observed outcomes, the prior where none is observed
    (module docstring). Shared by `KNNRouter` and the bundle runtime (kronaxis_lab/export/runtimes.py)."""
    w = neighbour_weights(sims, weighting, temperature, eps)[:, :, None]  # (n, k, 1)
    y = np.asarray(targets)[idx].astype(np.float64)  # (n, k, m)
    obs = np.isfinite(y)
    num = (w * np.where(obs, y, 0.0)).sum(1)
    den = (w * obs).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.asarray(prior)[None, :]).clip(0.0, 1.0)


# -- intent files ----------------------------------------------------------------------------------
class IntentFileError(ValueError):
    """An intent YAML file is malformed."""


def load_intents(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read and validate an intent file → (tier names cheapest first, [{name, examples, tier|model}])."""
    import yaml

    p = resolve_config_path(path)
    if not p.is_file():
        raise IntentFileError(f"intent file {path} does not exist")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise IntentFileError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(doc, Mapping):
        raise IntentFileError(f"{p}: top level must be a mapping with 'tiers' and 'intents'")
    tiers = doc.get("tiers")
    if not isinstance(tiers, list) or not tiers or not all(isinstance(t, str) for t in tiers):
        raise IntentFileError(f"{p}: field 'tiers' must be a non-empty list of tier names, cheapest first")
    raw = doc.get("intents")
    if not isinstance(raw, Mapping) or not raw:
        raise IntentFileError(f"{p}: field 'intents' must be a non-empty mapping intent name → spec")
    intents = []
    for name, spec in raw.items():
        where = f"{p}: intent '{name}'"
        if not isinstance(spec, Mapping):
            raise IntentFileError(f"{where}: must be a mapping with 'examples' and 'tier' or 'model'")
        unknown = set(spec) - {"examples", "tier", "model", "description"}
        if unknown:
            raise IntentFileError(f"{where}: unknown field(s) {sorted(unknown)}")
        ex = spec.get("examples")
        if not isinstance(ex, list) or not ex or not all(isinstance(e, str) and e.strip() for e in ex):
            raise IntentFileError(f"{where}: field 'examples' must be a non-empty list of non-empty strings")
        if ("tier" in spec) == ("model" in spec):
            raise IntentFileError(f"{where}: give exactly one of 'tier' or 'model'")
        if "tier" in spec and spec["tier"] not in tiers:
            raise IntentFileError(f"{where}: field 'tier' = {spec['tier']!r} is not one of {tiers}")
        intents.append({"name": str(name), "examples": list(ex), "tier": spec.get("tier"), "model": spec.get("model")})
    return list(tiers), intents


def intent_targets(
    intents: list[dict[str, Any]], tiers: Sequence[str], model_names: Sequence[str],
    model_tiers: Mapping[str, str] | None = None,
) -> np.ndarray:
    """(n_intents, n_models) 0/1: 1 for models at or above the intent's preferred tier/model."""
    model_names = list(model_names)
    tier_idx = tier_of_models(model_names, tiers, model_tiers)
    out = np.zeros((len(intents), len(model_names)))
    for r, it in enumerate(intents):
        if it["model"] is not None:
            if it["model"] not in model_names:
                raise IntentFileError(f"intent '{it['name']}': model '{it['model']}' is not in the fleet {model_names}")
            out[r, model_names.index(it["model"]) :] = 1.0
        else:
            t = list(tiers).index(it["tier"])
            # at or above the preferred tier; if the fleet has no model that high, the dearest one
            out[r] = tier_idx >= t if (tier_idx >= t).any() else np.arange(len(model_names)) == len(model_names) - 1
    return out


# -- the router ------------------------------------------------------------------------------------
class KNNRouter(UsesEmbedder, Classifier):
    """kNN over sentence embeddings of labelled queries (and/or intent examples); see module docstring."""

    def __init__(
        self,
        k: int = 10,
        weighting: str = "uniform",
        temperature: float = 0.05,
        eps: float = 1e-6,
        index: str = "exact",
        index_kwargs: Mapping[str, Any] | None = None,
        embedding: Mapping[str, Any] | Embedder | None = None,
        intents: str | None = None,
        model_tiers: Mapping[str, str] | None = None,
    ) -> None:
        self.k = k
        self.weighting = weighting
        self.temperature = temperature
        self.eps = eps
        self.index = index
        self.index_kwargs = index_kwargs
        self.embedding = embedding
        self.intents = intents
        self.model_tiers = model_tiers

    def _check_params(self) -> None:
        if self.weighting not in ("uniform", "distance", "softmax"):
            raise ValueError(f"weighting '{self.weighting}' is not one of uniform, distance, softmax")
        if int(self.k) < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.weighting == "softmax" and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for softmax weighting, got {self.temperature}")

    # -- training ---------------------------------------------------------------------------------
    @classmethod
    def from_intents(
        cls, path: str | Path, model_names: Sequence[str], model_tiers: Mapping[str, str] | None = None, **kwargs: Any
    ) -> "KNNRouter":
        """A ready router built from an intent file alone (no labelled data, no fit call needed)."""
        m = len(list(model_names))
        return cls(intents=str(path), model_tiers=model_tiers, **kwargs).fit([], np.zeros((0, m)), model_names)

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "KNNRouter":
        """Index the labelled queries (plus the intent examples when `intents` is set). Nothing is trained."""
        self._check_params()
        queries, y, model_names, _, _ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        texts, rows, labels = list(queries), [y], [""] * len(queries)
        if self.intents is not None:
            tiers, intents = load_intents(self.intents)
            t = intent_targets(intents, tiers, model_names, to_plain(self.model_tiers))
            for it, row in zip(intents, t):
                texts += it["examples"]
                rows.append(np.tile(row, (len(it["examples"]), 1)))
                labels += [it["name"]] * len(it["examples"])
        if not texts:
            raise ValueError("KNNRouter.fit: no labelled queries and no intent file to index")
        self.model_names_ = model_names
        self.targets_ = np.vstack(rows).astype(np.float32)
        self.labels_ = np.asarray(labels, dtype=str)
        self.vectors_ = self.embedder.encode(texts)
        observed = np.isfinite(self.targets_)
        counts = observed.sum(0)
        self.prior_ = np.where(counts > 0, np.nansum(self.targets_, 0) / np.maximum(counts, 1), 0.5).astype(np.float32)
        self._build_index()
        return self

    def _build_index(self) -> None:
        self.index_ = make_index(self.index, **(to_plain(self.index_kwargs) or {})).fit(self.vectors_)

    # -- inference --------------------------------------------------------------------------------
    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        m = len(self.model_names_)
        if not queries:
            return np.zeros((0, m))
        sims, idx = self.index_.search(self.embedder.encode(queries), int(self.k))
        return neighbour_average(sims, idx, self.targets_, self.prior_, self.weighting, self.temperature, self.eps)

    def predict_intent(self, queries: Sequence[str] | str) -> tuple[list[str], np.ndarray]:
        """Nearest intent name and its cosine similarity per query (only rows that came from an intent file)."""
        rows = np.flatnonzero(self.labels_ != "")
        if len(rows) == 0:
            raise ValueError("predict_intent: this router holds no intent examples (set `intents`)")
        s = _l2_normalise(self.embedder.encode(as_queries(queries))) @ _l2_normalise(self.vectors_[rows]).T
        best = s.argmax(1)
        return [str(self.labels_[rows[b]]) for b in best], s[np.arange(len(best)), best]

    # -- export -----------------------------------------------------------------------------------
    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.KnnRuntime`): the encoder in `encoder/`, the index
        (vectors, targets, prior) in index.npz; k and the weighting in the node."""
        directory = Path(directory)
        encoder = self.embedder.export_runtime(directory / "encoder", **graph_options)
        save_arrays(directory / "index.npz", vectors=self.vectors_, targets=self.targets_, prior=self.prior_)
        return {"kind": "kronaxis_lab.export.runtimes.KnnRuntime", "label_order": list(self.model_names_),
                "k": int(self.k), "weighting": str(self.weighting), "temperature": float(self.temperature),
                "eps": float(self.eps), "files": {"index": "index.npz"}, "nodes": {"encoder": encoder}}

    # -- persistence ------------------------------------------------------------------------------
    def save_state(self, directory: Path) -> None:
        np.savez(
            directory / STATE_FILE, vectors=self.vectors_, targets=self.targets_, labels=self.labels_, prior=self.prior_
        )

    def load_state(self, directory: Path) -> None:
        with np.load(directory / STATE_FILE, allow_pickle=False) as z:
            self.vectors_, self.targets_ = z["vectors"], z["targets"]
            self.labels_, self.prior_ = z["labels"], z["prior"]
        self._build_index()
