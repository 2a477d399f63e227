"""Routers for replay: classifier scores → policy → model choice, on recorded outcomes.

A router returns one or more named `RouteResult`s; each holds choices of shape (k, n): k operating points
(one for a fixed router, a sweep for a policy router) over the n replayed queries. The replay engine turns
choices into recorded cost and quality. Adding a router = one class here (or in its own module) + one YAML
in configs/routers/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from kronaxis_lab.classifiers.base import load_classifier
from kronaxis_lab.classifiers.calibration import log_loss
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing.calibration import calibrate_router
from kronaxis_lab.routing.costs import CostModel, TokenCounter, prompt_tokens, query_texts
from kronaxis_lab.routing.policies import Policy, WillingnessToPay


@dataclass
class ReplayContext:
    """What a router may use. `test` holds recorded outcomes: only the oracle may read its outcomes.

    Expected costs come from the one decision-time `CostModel` (kronaxis_lab.routing.costs), fitted on
    `train` unless given, with prompt tokens from `token_counter` (None: recorded input tokens)."""

    test: Matrices
    fleet: Fleet
    train: Matrices | None = None
    val: Matrices | None = None
    seed: int = 0
    cost_model: CostModel | None = None
    token_counter: TokenCounter | None = None
    _costs: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cost_model is None and self.train is not None and self.train.n > 0:
            tok = prompt_tokens(self.train, self.token_counter)
            val_tok = prompt_tokens(self.val, self.token_counter) if self.val is not None and self.val.n else None
            self.cost_model = CostModel.fit(self.train, self.fleet, tok, tokenizer=_counter_name(self.token_counter),
                                            val=self.val, val_token_counts=val_tok)

    def expected_cost_for(self, mats: Matrices) -> np.ndarray:
        """(n, m) expected $ of `mats`' queries under the cost model (cached per Matrices object)."""
        key = id(mats)
        if key not in self._costs:
            if self.cost_model is None:
                raise ValueError("expected costs need a cost model, fitted on a non-empty train split")
            n_i = prompt_tokens(mats, self.token_counter)
            self._costs[key] = self.cost_model.expected(n_i, texts=query_texts(mats))
        return self._costs[key]

    @property
    def expected_cost(self) -> np.ndarray:
        """Expected $ of the replayed queries."""
        return self.expected_cost_for(self.test)

    @property
    def premium_idx(self) -> int:
        return self.fleet.index(self.fleet.premium)

    @property
    def cheapest_idx(self) -> int:
        return self.fleet.index(self.fleet.cheapest)


@dataclass
class RouteResult:
    choices: np.ndarray  # (k, n) model index per operating point and query
    params: np.ndarray | None = None  # (k,) the sweep parameter of each point
    param_name: str | None = None
    predictions: np.ndarray | None = None  # (n, m) P̂ used, when there is one
    info: dict[str, Any] = field(default_factory=dict)
    headline: int | None = None  # operating point to summarise (None: the replay's default rule)
    # (k, n) recorded $ of the calls a multi-call router (a cascade) made besides the one whose answer it
    # returned; the replay charges them (None: one call per query)
    extra_cost: np.ndarray | None = None

    @property
    def is_sweep(self) -> bool:
        return self.choices.shape[0] > 1


def _counter_name(counter: TokenCounter | None) -> str | None:
    return None if counter is None else str(getattr(counter, "name", type(counter).__name__))


class Router(ABC):
    name: str = "router"

    @abstractmethod
    def route(self, ctx: ReplayContext) -> dict[str, RouteResult]:
        """Named results (a router may produce several, e.g. one per model)."""


class OracleRouter(Router):
    """Upper bound; reads test outcomes by definition. Its headline point is the cheapest model that
    answered correctly (by recorded cost; the cheapest model if none did). Its curve is the oracle under a
    budget: argmax λ·correct − cost over λ (the λ = ∞ end is the headline point), so its AIQ is the
    best any router could reach on this data."""

    name = "oracle"

    def __init__(self, num: int = 60):
        self.num = num

    def route(self, ctx):
        t = ctx.test
        masked = np.where(t.correct, t.costs, np.inf)
        pick = masked.argmin(axis=1)
        none = ~t.correct.any(axis=1)
        pick[none] = t.costs[none].argmin(axis=1) if none.any() else pick[none]
        wtp = WillingnessToPay(num=self.num)
        truth = t.correct.astype(float)
        params = wtp.default_params(truth, t.costs)[:-1]  # finite λ; the exact headline point is appended
        choices = np.vstack([wtp.choose(truth, t.costs, params), pick[None, :].astype(np.int32)])
        params = np.append(params, np.inf)
        return {self.name: RouteResult(choices, params, "lambda", headline=len(params) - 1)}


class AlwaysRouter(Router):
    """One fixed router per model: `always:<model>`."""

    def __init__(self, models: Sequence[str] | None = None):
        self.models = None if models is None else list(models)

    def route(self, ctx):
        names = self.models or ctx.fleet.names
        n = ctx.test.n
        return {f"always:{m}": RouteResult(np.full((1, n), ctx.fleet.index(m), np.int32)) for m in names}


class CheapestRouter(Router):
    name = "cheapest"

    def route(self, ctx):
        return {self.name: RouteResult(np.full((1, ctx.test.n), ctx.cheapest_idx, np.int32))}


class RandomRouter(Router):
    """Random mixing: premium model with probability p, else the cheapest, swept over p (RouteLLM's random
    baseline). One uniform draw per query is shared by all p (common random numbers), so the curve is
    monotone and the premium share is ≈ p at every point."""

    name = "random"

    def __init__(self, premium_shares: Sequence[float] | None = None, num: int = 21, seed: int | None = None):
        self.premium_shares = np.linspace(0, 1, num) if premium_shares is None else np.asarray(premium_shares, float)
        self.seed = seed

    def route(self, ctx):
        rng = np.random.default_rng(ctx.seed if self.seed is None else self.seed)
        u = rng.random(ctx.test.n)
        p = self.premium_shares
        choices = np.where(u[None, :] < p[:, None], ctx.premium_idx, ctx.cheapest_idx).astype(np.int32)
        return {self.name: RouteResult(choices, p, "premium_share")}


class Predictor(ABC):
    """Produces P̂ (n, m) for a set of queries (default: the replayed ones) — a classifier, a prior, ..."""

    @abstractmethod
    def predict(self, ctx: ReplayContext, mats: Matrices | None = None) -> np.ndarray: ...


class ClassifierPredictor(Predictor):
    """P̂ from a trained classifier directory (`kronaxis-train` output), columns reordered to the fleet. One
    predictor serves every policy of its classifier, so its P̂ of a split is computed once (kept per Matrices
    object: a fine-tuned encoder's pass over a test split takes minutes on a CPU)."""

    def __init__(self, classifier_dir: str, batch_size: int = 256):
        self.classifier_dir = str(classifier_dir)
        self.clf = load_classifier(classifier_dir)
        self.batch_size = batch_size
        self._memo: dict[tuple[int, tuple[str, ...]], tuple[Matrices, np.ndarray]] = {}

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        key = (id(mats), tuple(ctx.fleet.names))  # the columns follow the fleet's order
        hit = self._memo.get(key)
        if hit is not None and hit[0] is mats:  # the entry holds its Matrices, so the id cannot be reused
            return hit[1].copy()
        P = self._predict(ctx, mats)
        self._memo[key] = (mats, P)
        return P.copy()

    def _predict(self, ctx: ReplayContext, mats: Matrices) -> np.ndarray:
        names = list(self.clf.model_names_)
        missing = [m for m in ctx.fleet.names if m not in names]
        if missing:
            raise ValueError(f"{self.classifier_dir}: classifier predicts {names}, but the fleet also has {missing}")
        cols = [names.index(m) for m in ctx.fleet.names]
        texts = mats.queries["text"].astype(str).tolist()
        if not texts:
            return np.zeros((0, len(cols)))
        return np.asarray(self.clf.predict_proba(texts), float)[:, cols]


class PriorPredictor(Predictor):
    """Non-learned baseline: per-model success rate on train, per `by` group (e.g. task) when given,
    shrunk towards the model's overall rate with `smoothing` pseudo-counts."""

    def __init__(self, by: str | None = "task", smoothing: float = 10.0):
        self.by, self.smoothing = by, float(smoothing)

    def rates(self, ctx) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(tags, (t, m) smoothed success rate per tag and model, (m,) overall rate) learned on ctx.train."""
        tr = ctx.train
        if tr is None or tr.n == 0:
            raise ValueError("PriorPredictor needs a train split")
        overall = tr.scores.mean(axis=0)
        if not self.by:
            return [], np.zeros((0, len(overall))), overall
        g = pd.DataFrame(tr.scores).groupby(tr.queries[self.by].astype(str).to_numpy())
        sums, counts = g.sum(), g.size()
        rate = (sums.to_numpy() + self.smoothing * overall) / (counts.to_numpy()[:, None] + self.smoothing)
        return [str(t) for t in sums.index], rate, overall

    @staticmethod
    def lookup(tags: Sequence[str], rate: np.ndarray, overall: np.ndarray, wanted: Sequence[Any]) -> np.ndarray:
        """(n, m) rates of the `wanted` tags (an unseen one: the overall rate)."""
        row = {t: i for i, t in enumerate(tags)}
        idx = np.array([row.get(str(w), -1) for w in wanted], dtype=np.int64)
        table = np.vstack([rate, overall[None, :]]) if len(tags) else overall[None, :]
        return table[np.where(idx < 0, len(tags), idx)].astype(float)

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        tags, rate, overall = self.rates(ctx)
        if not self.by:
            return np.broadcast_to(overall, mats.scores.shape).copy()
        return self.lookup(tags, rate, overall, mats.queries[self.by].astype(str).tolist())


class MetadataBlendPredictor(Predictor):
    """Text + metadata: a text predictor's P̂ blended with the per-tag success rates of the request's metadata tag
    (the queries table's `by` column standing in for an OpenAI `metadata` tag a deployment's clients send):
    logit P = w · logit P̂_text + (1 − w) · logit P̂_tag, with w picked on val by log-loss (w = 1: the tag adds
    nothing). A "text + metadata" router: only for deployments whose requests carry the tag."""

    def __init__(self, base: Predictor, by: str = "task", smoothing: float = 10.0,
                 weights: Sequence[float] = tuple(np.linspace(0, 1, 11))):
        self.base, self.tag = base, PriorPredictor(by=by, smoothing=smoothing)
        self.weights = [float(w) for w in weights]
        self.weight: float | None = None

    @staticmethod
    def blend(P: np.ndarray, T: np.ndarray, w: float) -> np.ndarray:
        """logit⁻¹(w · logit P + (1 − w) · logit T), both clipped to [1e-6, 1 − 1e-6]."""
        eps = 1e-6
        return expit(w * logit(np.clip(P, eps, 1 - eps)) + (1 - w) * logit(np.clip(T, eps, 1 - eps)))

    def fit_weight(self, ctx: ReplayContext) -> float:
        if ctx.val is None or ctx.val.n == 0:
            raise ValueError("MetadataBlendPredictor picks its weight on val, and this replay has no val split")
        P, T = self.base.predict(ctx, ctx.val), self.tag.predict(ctx, ctx.val)
        losses = [log_loss(self.blend(P, T, w), ctx.val.scores) for w in self.weights]
        self.weight = self.weights[int(np.argmin(losses))]
        return self.weight

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        w = self.fit_weight(ctx) if self.weight is None else self.weight
        return self.blend(self.base.predict(ctx, mats), self.tag.predict(ctx, mats), w)


class PolicyRouter(Router):
    """P̂ from a predictor, swept through a policy (λ willingness-to-pay, threshold, strong-win, ...).

    With `calibration` ({target: premium_share | usd_per_1k | pct_premium_accuracy, value: x}), the
    policy parameter is picked on the val split to hit the target, and the achieved value on the
    replayed split is reported with a bootstrap CI (see kronaxis_lab.routing.calibration).
    """

    def __init__(self, predictor: Predictor, policy: Policy, name: str | None = None,
                 calibration: dict | None = None, info: dict | None = None):
        self.predictor, self.policy = predictor, policy
        self.name = name or f"{type(predictor).__name__}+{policy.name}"
        self.calibration = dict(calibration) if calibration else None
        self.info = dict(info or {})  # copied into every result, e.g. {"identity": {classifier_dir, policy, ...}}

    def predictions(self, ctx: ReplayContext, mats: Matrices) -> np.ndarray:
        """P̂ (n, m) of the predictor on `mats`, shape-checked."""
        P = np.asarray(self.predictor.predict(ctx, mats), float)
        if P.shape != mats.scores.shape:
            raise ValueError(f"{self.name}: predictions have shape {P.shape}, expected {mats.scores.shape}")
        return P

    def route(self, ctx):
        P = self.predictions(ctx, ctx.test)
        cost = ctx.expected_cost
        self.policy.bind(ctx.fleet, ctx.test.queries)
        params, choices = self.policy.sweep(P, cost)
        rr = RouteResult(choices, params, self.policy.name, predictions=P, info=dict(self.info))
        if self.calibration:
            rr.info["calibration"] = calibrate_router(self, ctx, P, cost, **self.calibration)
        return {self.name: rr}
