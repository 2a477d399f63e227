"""MLP regressor on sentence embeddings: RouterBench's "MLP" baseline.

RouterBench (withmartian/routerbench, routers/mlp_router.py) fits one sklearn `MLPRegressor` per model
on the prompt embeddings against that model's score (rows with a missing score dropped), with
max_iter=200, random_state=1234, relu, constant learning rate 0.001, and sweeps hidden_layer_sizes over
[100] and [100, 100] (configs/evaluate_routers.yaml). Its prediction P̂_j(q) = MLP_j(e(q)) is a
regression output; here it is clipped to [0, 1] so it is a probability like every other classifier's.

`per_model: false` fits one multi-output MLPRegressor for all models instead (shared hidden layers,
one fit; only for targets without NaN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kronaxis_lab.export.formats import save_arrays
from kronaxis_lab.export.schema import ExportError

from .base import Classifier, as_queries, check_fit_inputs, to_plain
from .embedding import Embedder, UsesEmbedder

STATE_FILE = "mlp.joblib"


class MLPRouter(UsesEmbedder, Classifier):
    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        alpha: float = 1e-4,
        max_iter: int = 200,
        early_stopping: bool = False,
        random_state: int = 1234,
        per_model: bool = True,
        embedding: Mapping[str, Any] | Embedder | None = None,
        show_progress: bool = True,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.alpha = alpha
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.per_model = per_model
        self.embedding = embedding
        self.show_progress = show_progress

    def _new_mlp(self):
        from sklearn.neural_network import MLPRegressor

        return MLPRegressor(
            hidden_layer_sizes=tuple(int(h) for h in to_plain(self.hidden_layer_sizes)),
            activation=self.activation,
            learning_rate=self.learning_rate,
            learning_rate_init=self.learning_rate_init,
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=self.early_stopping,
            random_state=self.random_state,
        )

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "MLPRouter":
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        queries, y, model_names, _, _ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        if not queries:
            raise ValueError("MLPRouter.fit: no training queries")
        if not self.per_model and not np.isfinite(y).all():
            # one multi-output MLPRegressor cannot mask single entries (the contract's NaN rule)
            raise ValueError("MLPRouter(per_model=False) cannot mask NaN (unobserved) targets; use per_model=True")
        self.model_names_ = model_names
        X = self.embedder.encode(queries)
        with warnings.catch_warnings():
            # max_iter is RouterBench's fixed budget, not a convergence criterion
            warnings.simplefilter("ignore", ConvergenceWarning)
            if not self.per_model:
                self.mlps_ = [self._new_mlp().fit(X, y)]
            else:
                self.mlps_ = []
                for j in tqdm(range(len(model_names)), desc="mlp", disable=not self.show_progress):
                    obs = np.isfinite(y[:, j])
                    self.mlps_.append(self._new_mlp().fit(X[obs], y[obs, j]))
        return self

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        if not queries:
            return np.zeros((0, len(self.model_names_)))
        X = self.embedder.encode(queries)
        if not self.per_model:
            out = self.mlps_[0].predict(X).reshape(len(queries), -1)
        else:
            out = np.stack([m.predict(X) for m in self.mlps_], axis=1)
        return np.clip(out, 0.0, 1.0)

    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.MlpRuntime`): the encoder in `encoder/`, every network's
        weights and biases in weights.npz (n{i}_W{l}, n{i}_b{l})."""
        directory = Path(directory)
        if any(m.out_activation_ != "identity" for m in self.mlps_):
            raise ExportError("MLPRouter: only regressors with an identity output layer are exportable")
        encoder = self.embedder.export_runtime(directory / "encoder", **graph_options)
        arrays = {}
        for i, m in enumerate(self.mlps_):
            for j, (W, b) in enumerate(zip(m.coefs_, m.intercepts_)):
                arrays[f"n{i}_W{j}"], arrays[f"n{i}_b{j}"] = W, b
        save_arrays(directory / "weights.npz", **arrays)
        return {"kind": "kronaxis_lab.export.runtimes.MlpRuntime", "label_order": list(self.model_names_),
                "activation": str(self.mlps_[0].activation), "per_model": bool(self.per_model),
                "n_layers": [len(m.coefs_) for m in self.mlps_], "files": {"weights": "weights.npz"},
                "nodes": {"encoder": encoder}}

    def save_state(self, directory: Path) -> None:
        import joblib

        joblib.dump(self.mlps_, directory / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        import joblib

        self.mlps_ = joblib.load(directory / STATE_FILE)  # pickle: only load directories you trust
