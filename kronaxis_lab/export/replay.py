"""A bundle as replay routers: replay = serve.

    res = replay_bundle(load_bundle(dir), dataset, reference_routers)      # a ReplayResult, as kronaxis-replay
    bundle_metrics(res, bundle)                                            # the bundle's metrics.json replay

Two routers per bundle:

- `bundle:<policy>@<param>` (`BundleRouter`): for each replayed query, `bundle.predict_proba` then
  `bundle.decide(P, texts)` — the calls `serving.engine.RoutingEngine` makes for a default request (no task
  labels, no per-request override), so its decisions are the served router's, priced by the bundle's cost
  model with its own prompt-token counter;
- `bundle+<policy>`: the same predictions through the policy's whole sweep (the cost–quality curve, AIQ).

Stickiness (sessions) and governance (data classes found in the text) run after this decision in the server;
a replay of single queries without sensitive data is unchanged by them.
The replay is priced by the bundle's `CostModel` throughout (reference routers included), so its numbers are
the ones the exporter wrote into metrics.json.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.export.bundle import Bundle, instantiate_policy
from kronaxis_lab.routing.replay import ReplayResult, replay
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext, Router, RouteResult

__all__ = ["BundlePredictor", "BundleRouter", "bundle_metrics", "bundle_router_names", "bundle_routers",
           "replay_bundle"]


class BundlePredictor(Predictor):
    """P̂ of a loaded bundle (`variant`, default: the bundle's), cached per query set: the sweep and the fixed
    router share one pass."""

    def __init__(self, bundle: Bundle, variant: str | None = None):
        self.bundle, self.variant = bundle, variant
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        if list(ctx.fleet.names) != self.bundle.model_names:
            raise ValueError(f"the replayed fleet {ctx.fleet.names} is not the bundle's {self.bundle.model_names} "
                             "(same models in the same order)")
        key = tuple(mats.queries["query_id"].astype(str))
        if key not in self._cache:
            self._cache[key] = np.asarray(self.bundle.predict_proba(mats.queries["text"].astype(str).tolist(),
                                                                    self.variant), dtype=float)
        return self._cache[key]


class BundleRouter(Router):
    """The bundle's own decision at its operating point (module docstring)."""

    def __init__(self, predictor: BundlePredictor, name: str, info: Mapping[str, Any] | None = None):
        self.predictor, self.name, self.info = predictor, name, dict(info or {})

    def route(self, ctx: ReplayContext) -> dict[str, RouteResult]:
        b = self.predictor.bundle
        P = self.predictor.predict(ctx)
        choices = b.decide(P, ctx.test.queries["text"].astype(str).tolist())
        return {self.name: RouteResult(choices[None, :], np.array([b.param]), b.policy.name, predictions=P,
                                       info=dict(self.info))}


def bundle_router_names(bundle: Bundle) -> tuple[str, str]:
    """(sweep name, fixed-operating-point name)."""
    return f"bundle+{bundle.policy_name}", f"bundle:{bundle.policy_name}@{bundle.param:.4g}"


def bundle_routers(bundle: Bundle, variant: str | None = None) -> dict[str, Router]:
    """{sweep name: PolicyRouter, fixed name: BundleRouter} over one shared `BundlePredictor`."""
    pred = BundlePredictor(bundle, variant)
    sweep, fixed = bundle_router_names(bundle)
    identity = {"bundle_dir": str(bundle.dir), "bundle_id": bundle.bundle_id, "policy": bundle.policy_name}
    policy = instantiate_policy(bundle.meta["policy"]["config"], f"{bundle.dir}: policy.config")
    return {sweep: PolicyRouter(pred, policy, name=sweep, info={"identity": identity}),
            fixed: BundleRouter(pred, fixed, info={"identity": {**identity, "param": bundle.param}})}


def replay_bundle(bundle: Bundle, dataset: RoutingDataset, reference_routers: Mapping[str, Router] | None = None,
                  *, split: str = "test", train_split: str = "train", val_split: str = "val", seed: int = 0,
                  variant: str | None = None, extra_routers: Mapping[str, Router] | None = None) -> ReplayResult:
    """Replay `split` of `dataset` through the bundle's routers beside `reference_routers` (and `extra_routers`),
    every expected cost from the bundle's cost model and token counter."""
    routers = {**dict(reference_routers or {}), **dict(extra_routers or {}), **bundle_routers(bundle, variant)}
    return replay(dataset, routers, split=split, seed=seed, train_split=train_split, val_split=val_split,
                  token_counter=bundle.cost_counter, cost_model=bundle.cost_model)


def bundle_metrics(res: ReplayResult, bundle: Bundle, variant: str | None = None) -> dict[str, Any]:
    """The `bundle_router` / `bundle_sweep` / `replay` part of a bundle's metrics.json."""
    sweep, fixed = bundle_router_names(bundle)
    return {"bundle_router": fixed, "bundle_sweep": sweep, "replay": {
        "dataset": res.dataset, "split": res.split, "n_queries": res.n_queries, "premium": res.premium,
        "cheapest": res.cheapest, "variant": variant or bundle.default_variant, "routers": res.routers}}
