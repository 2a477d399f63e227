"""The one decision-time cost model: expected USD per (query, model) from what a router knows before the call.

Replay, calibration, export and serving all price a choice with `CostModel.expected`, so the operating point
chosen in the lab is applied under the same numbers in production:

    cost_ij = n_i · s_j · p_in_j + ō_j · p_out_j

- n_i: prompt tokens of query i, counted by a real tokenizer (`TokenCounter`; the bundle ships the same
  tokenizer). Without a counter (synthetic matrices, unit tests) n_i is the query's mean recorded input
  tokens over the models: the prompt's length, known before the call;
- s_j = Σ recorded input tokens of model j / Σ n over the train queries: maps our count to model j's
  (prompt templates, other tokenizers);
- ō_ij: output tokens of model j on query i, *predicted from the text* by `OutputTokenModel` (hashed word
  n-grams + log prompt length → ridge on log1p(tokens), fitted on train's recorded output tokens, with its
  validation error stored beside it); without a text (or without the model) the train mean of model j.
  Per-task tables are not used: production traffic carries no task label (a router that reads one is a
  reference, not a deployable router);
- p_in / p_out: fleet prices in USD per token. A fleet without prices (e.g. RouterBench, where only $ was
  recorded) uses the train mean recorded $ per model for every query (`flat_cost`).

Everything is estimated on the train split only: a dataset without one has no honest expected cost, and
asking for it is an error rather than a silent fall-back to the replayed split's outcomes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction import FeatureHasher
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import Ridge
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing import ngrams


class CostModelError(ValueError):
    """A cost model is malformed, or cannot be estimated from the data given."""


class TokenCounter(Protocol):
    """Anything that counts prompt tokens per text (no special tokens, no truncation)."""

    def count(self, texts: Sequence[str]) -> np.ndarray: ...


def query_texts(mats: Matrices) -> list[str]:
    return mats.queries["text"].astype(str).tolist() if "text" in mats.queries else [""] * mats.n


def prompt_tokens(mats: Matrices, counter: TokenCounter | None = None) -> np.ndarray:
    """n_i for every query of `mats`: the counter's count of its text, else its mean recorded input tokens."""
    if counter is not None:
        return np.asarray(counter.count(query_texts(mats)), dtype=float)
    if mats.n == 0:
        return np.zeros(0)
    return np.asarray(mats.input_tokens, dtype=float).mean(axis=1)


@dataclass
class OutputTokenModel:
    """Predicted output tokens per model from the prompt: ridge on log1p(tokens) over hashed word 1–2-grams
    (sklearn's stateless `HashingVectorizer`, so the server rebuilds the features from these settings alone)
    plus log1p(prompt tokens); exp back with Duan's smearing factor (E[y] rather than exp E[log y])."""

    coef: list[list[float]]  # (m, n_features + 1): hashed features, then log1p(prompt tokens)
    intercept: list[float]
    smearing: list[float]
    max_tokens: list[float]  # predictions are clipped to [0, 2 × the train maximum]
    n_features: int = 4096
    alpha: float = 1.0
    error: dict[str, Any] = field(default_factory=dict)  # validation MAE (tokens) vs the per-model mean

    def __post_init__(self) -> None:
        m = len(self.intercept)
        if np.shape(self.coef) != (m, self.n_features + 1) or len(self.smearing) != m or len(self.max_tokens) != m:
            raise CostModelError(f"output_model: coef must be ({m}, {self.n_features + 1}) with {m} intercepts, "
                                 f"smearing factors and maxima, got coef {np.shape(self.coef)}")
        W = np.asarray(self.coef, float)
        if not np.all(np.isfinite(W)):
            raise CostModelError("output_model.coef must be finite")
        # prediction state built once (not dataclass fields: to_dict / JSON carry the lists only); rebuilt by
        # dataclasses.replace, stale if a field is assigned in place afterwards
        self._hashed_coef = np.ascontiguousarray(W[:, :self.n_features].T)  # (n_features, m)
        self._length_coef = W[:, self.n_features].copy()  # (m,) the log1p(prompt tokens) column
        self._intercept = np.asarray(self.intercept, float)
        self._smearing = np.asarray(self.smearing, float)
        self._max_tokens = np.asarray(self.max_tokens, float)
        self._vectorizer = self.hashing_vectorizer(self.n_features)
        # `HashingVectorizer.transform` = hasher over the analyzer's n-grams, then l2 rows: built once here and
        # run without its per-call validation (half of a batch-1 decision); `hashed` checks it is the same
        # the n-grams are shared with a TF-IDF classifier reading the same prompt (routing/ngrams.py)
        self._analyzer = ngrams.analyzer_for(self._vectorizer)
        v = self._vectorizer
        self._hasher = FeatureHasher(n_features=v.n_features, input_type="string", dtype=v.dtype,
                                     alternate_sign=v.alternate_sign)

    @staticmethod
    def hashing_vectorizer(n_features: int) -> HashingVectorizer:
        """The hashed word 1–2-gram features (stateless: the same settings give the same features)."""
        return HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")

    def hashed(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """`hashing_vectorizer(n_features).transform(texts)`, bit for bit (the l2 norm is the vectorizer's)."""
        X = self._hasher.transform(self._analyzer(t) for t in texts)
        inplace_csr_row_normalize_l2(X)
        return X

    @staticmethod
    def features(texts: Sequence[str], prompt_tok: np.ndarray, n_features: int) -> sparse.csr_matrix:
        hv = OutputTokenModel.hashing_vectorizer(n_features)
        return sparse.hstack([hv.transform(list(texts)), np.log1p(np.asarray(prompt_tok, float))[:, None]],
                             format="csr")

    @classmethod
    def fit(cls, texts: Sequence[str], prompt_tok: np.ndarray, out_tokens: np.ndarray, n_features: int = 4096,
            alpha: float = 1.0) -> "OutputTokenModel":
        X = cls.features(texts, prompt_tok, n_features)
        y = np.log1p(np.clip(np.asarray(out_tokens, float), 0, None))
        reg = Ridge(alpha=alpha).fit(X, y)
        resid = y - reg.predict(X).reshape(y.shape)
        return cls(coef=np.atleast_2d(reg.coef_).tolist(), intercept=np.atleast_1d(reg.intercept_).tolist(),
                   smearing=np.exp(resid).mean(axis=0).tolist(),
                   max_tokens=(2 * np.asarray(out_tokens, float).max(axis=0)).tolist(), n_features=n_features,
                   alpha=alpha)

    def predict(self, texts: Sequence[str], prompt_tok: np.ndarray) -> np.ndarray:
        """(n, m) expected output tokens."""
        if len(texts) == 0:
            return np.zeros((0, len(self.intercept)))
        # = features(texts, prompt_tok) @ coef.T, with the length column added on its own (no sparse hstack)
        z = self.hashed(texts) @ self._hashed_coef
        z = np.asarray(z) + np.log1p(np.asarray(prompt_tok, float).reshape(-1))[:, None] * self._length_coef
        y = np.expm1(z + self._intercept) * self._smearing
        return np.clip(y, 0, self._max_tokens)


@dataclass
class CostModel:
    """See the module docstring; every list is in fleet order."""

    price_in: list[float]  # USD per input token
    price_out: list[float]  # USD per output token
    input_token_scale: list[float]
    mean_output_tokens: list[float]
    mean_input_tokens: float = 0.0  # our count, train mean: used when a caller gives neither text nor counts
    flat_cost: list[float] | None = None  # set when the fleet has no prices
    tokenizer: str | None = None  # what counted n_i (None: recorded input tokens)
    output_model: OutputTokenModel | None = None  # None: every query gets the model's train mean

    def __post_init__(self) -> None:
        if isinstance(self.output_model, Mapping):  # from router.json
            try:
                self.output_model = OutputTokenModel(**dict(self.output_model))
            except TypeError as e:
                raise CostModelError(f"cost_model.output_model: {e}") from e
        self._check()

    def _check(self) -> None:
        m = len(self.price_in)
        if self.output_model is not None and len(self.output_model.intercept) != m:
            raise CostModelError(f"cost_model.output_model predicts {len(self.output_model.intercept)} models, not {m}")
        lists = {"price_out": self.price_out, "input_token_scale": self.input_token_scale,
                 "mean_output_tokens": self.mean_output_tokens}
        if self.flat_cost is not None:
            lists["flat_cost"] = self.flat_cost
        for name, values in lists.items():
            if len(values) != m:
                raise CostModelError(f"cost_model.{name} has {len(values)} entries for {m} models")
        for name, values in {"price_in": self.price_in, **lists, "mean_input_tokens": [self.mean_input_tokens]}.items():
            arr = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise CostModelError(f"cost_model.{name} must be finite and ≥ 0, got {list(values)}")

    @property
    def n_models(self) -> int:
        return len(self.price_in)

    @classmethod
    def fit(cls, train: Matrices | None, fleet: Fleet, token_counts: np.ndarray | None = None,
            tokenizer: str | None = None, predict_output: bool = True, val: Matrices | None = None,
            val_token_counts: np.ndarray | None = None) -> "CostModel":
        """Estimate from the train split's recorded tokens/costs and n_i of its queries (`token_counts`;
        None = their mean recorded input tokens). With `predict_output`, output tokens are predicted from the
        text (`OutputTokenModel`); its error on `val` (when given) is stored with it."""
        if train is None or train.n == 0:
            raise CostModelError("the expected cost is estimated on the train split, and it is empty: give the "
                                 "dataset a train split (a router cannot be priced from the replayed split's outcomes)")
        p_in, p_out = fleet.prices()
        counts = prompt_tokens(train) if token_counts is None else np.asarray(token_counts, dtype=float)
        if counts.shape != (train.n,):
            raise ValueError(f"token_counts has shape {counts.shape}, expected ({train.n},)")
        rec_in = train.input_tokens.sum(axis=0)
        total = counts.sum()
        scale = np.where((rec_in > 0) & (total > 0), rec_in / max(total, 1e-12), 1.0)
        flat = train.costs.mean(axis=0).tolist() if not np.any(p_in) and not np.any(p_out) else None
        mean_out = train.output_tokens.mean(axis=0)
        out_model = None
        if predict_output and flat is None and np.any(train.output_tokens != train.output_tokens[:1]):
            out_model = OutputTokenModel.fit(query_texts(train), counts, train.output_tokens)
            if val is not None and val.n:
                vc = prompt_tokens(val) if val_token_counts is None else np.asarray(val_token_counts, float)
                err = np.abs(out_model.predict(query_texts(val), vc) - val.output_tokens).mean(axis=0)
                base = np.abs(mean_out[None, :] - val.output_tokens).mean(axis=0)
                out_model.error = {"split": "val", "n": int(val.n), "mae_tokens": err.tolist(),
                                   "mae_tokens_mean_baseline": base.tolist()}
        return cls(price_in=[float(x) for x in p_in], price_out=[float(x) for x in p_out],
                   input_token_scale=[float(x) for x in scale],
                   mean_output_tokens=[float(x) for x in mean_out],
                   mean_input_tokens=float(counts.mean()), flat_cost=flat, tokenizer=tokenizer, output_model=out_model)

    def expected(self, input_tokens: np.ndarray | Sequence[float] | None = None, n: int | None = None,
                 texts: Sequence[str] | None = None) -> np.ndarray:
        """(n, m) expected USD. `input_tokens`: n_i per query (None → `n` queries of the train mean length);
        `texts`: the prompts, for the predicted output tokens (None → the train mean per model)."""
        if input_tokens is None:
            tok = np.full(int(n if n is not None else (0 if texts is None else len(texts))), self.mean_input_tokens)
        else:
            tok = np.asarray(input_tokens, dtype=float).reshape(-1)
        if self.flat_cost is not None:
            return np.broadcast_to(np.asarray(self.flat_cost, float), (len(tok), self.n_models)).copy()
        scaled_in = tok[:, None] * np.asarray(self.input_token_scale, float)[None, :]
        out = self.output_tokens(tok, texts)
        return scaled_in * np.asarray(self.price_in, float) + out * np.asarray(self.price_out, float)

    def output_tokens(self, input_tokens: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """(n, m) expected output tokens: predicted from `texts` when there is a model, else the train means."""
        n = len(input_tokens)
        if texts is not None and self.output_model is not None:
            if len(texts) != n:
                raise ValueError(f"{len(texts)} texts for {n} token counts")
            return self.output_model.predict(list(texts), input_tokens)
        return np.broadcast_to(np.asarray(self.mean_output_tokens, float), (n, self.n_models))

    def usage_cost(self, j: int, input_tokens: float, output_tokens: float) -> float:
        """Realised USD of a call to model j from the tokens an upstream reported (no scaling: its own count)."""
        return float(input_tokens) * self.price_in[j] + float(output_tokens) * self.price_out[j]

    def expected_output_tokens(self, model_names: Sequence[str]) -> dict[str, float]:
        """{model: mean output tokens}."""
        return {str(name): float(v) for name, v in zip(model_names, self.mean_output_tokens)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "cost_model") -> "CostModel":
        if not isinstance(d, Mapping):
            raise CostModelError(f"{where} must be an object, got {type(d).__name__}")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise CostModelError(f"{where}: {e}") from e
        except CostModelError as e:
            raise CostModelError(f"{where}: {e}") from e
