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
from kronaxis_lab.routing.cascades import threshold_grid
from kronaxis_lab.routing.replay import ReplayResult, replay
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext, Router, RouteResult

__all__ = ["BundleCascadeRouter", "BundlePredictor", "BundleRouter", "bundle_metrics", "bundle_router_names",
           "bundle_routers", "replay_bundle"]


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
            P = np.asarray(self.bundle.predict_proba(mats.queries["text"].astype(str).tolist(), self.variant), float)
            md = self.bundle.metadata
            if md is not None:  # tagged traffic: the queries' `by` column as each request's tag (the server's blend)
                if md.by not in mats.queries.columns:
                    raise ValueError(f"the bundle blends the request tag {md.by!r}, which these queries lack")
                P = md.apply(P, mats.queries[md.by].astype(str).tolist())
            self._cache[key] = P
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


class BundleCascadeRouter(Router):
    """The bundle's decision, then its cascade on the rows sent to the cascade's first model: the recorded reply
    judged by `BundleCascade.keep` (the server's code), escalated to `second` when not trusted; every call made
    is charged (`extra_cost`). With `sweep`, the judgement threshold is swept into a curve instead."""

    def __init__(self, predictor: BundlePredictor, name: str, info: Mapping[str, Any] | None = None,
                 sweep: bool = False, num: int = 41):
        self.predictor, self.name, self.info, self.sweep, self.num = predictor, name, dict(info or {}), sweep, num

    def route(self, ctx: ReplayContext) -> dict[str, RouteResult]:
        b = self.predictor.bundle
        cas = b.cascade
        index = {n: i for i, n in enumerate(b.model_names)}
        P = self.predictor.predict(ctx)
        pre = b.decide(P, ctx.test.queries["text"].astype(str).tolist())
        trust = cas.trust_on(ctx.test, index)
        taus = threshold_grid(trust, self.num) if self.sweep else np.array([cas.threshold])
        choices, extra = cas.plan(pre, trust, taus, ctx.test.costs, index)
        cascaded = pre == index[cas.first]
        escalated = cascaded[None, :] & (choices != pre[None, :])
        info = {**self.info, "family": "cascade", "cascade": {
            "signal": cas.signal.name, "first": cas.first, "second": cas.second, "also_calls": cas.also_calls,
            "threshold": cas.threshold, "pre_route": cas.pre_route, "cascaded_share": float(cascaded.mean()),
            "escalated_share": [float(e) for e in escalated.mean(axis=1)],
            "calls_per_query": [float(c) for c in 1 + cascaded.mean() * len(cas.also_calls) + escalated.mean(axis=1)]}}
        return {self.name: RouteResult(choices, taus if self.sweep else np.array([b.param]),
                                       "threshold" if self.sweep else b.policy.name, predictions=P, info=info,
                                       extra_cost=extra)}


def _point(bundle: Bundle) -> str:
    return f"{bundle.policy_name}@{bundle.param:.4g}"


def bundle_router_names(bundle: Bundle) -> tuple[str, str]:
    """(sweep name, fixed-operating-point name): with a cascade, the fixed router is the cascade's."""
    cascade = "" if bundle.cascade is None else f"cascade-{bundle.cascade.signal.name}:"
    return f"bundle+{bundle.policy_name}", f"bundle:{cascade}{_point(bundle)}"


def bundle_routers(bundle: Bundle, variant: str | None = None) -> dict[str, Router]:
    """{sweep name: PolicyRouter, fixed name: BundleRouter (or, with a cascade, BundleCascadeRouter — beside
    the bundle's own decision without it and the cascade's threshold sweep)} over one shared `BundlePredictor`."""
    pred = BundlePredictor(bundle, variant)
    sweep, fixed = bundle_router_names(bundle)
    identity = {"bundle_dir": str(bundle.dir), "bundle_id": bundle.bundle_id, "policy": bundle.policy_name}
    policy = instantiate_policy(bundle.meta["policy"]["config"], f"{bundle.dir}: policy.config")
    out: dict[str, Router] = {sweep: PolicyRouter(pred, policy, name=sweep, info={"identity": identity})}
    fixed_info = {"identity": {**identity, "param": bundle.param}}
    if bundle.cascade is None:
        out[fixed] = BundleRouter(pred, fixed, info=fixed_info)
        return out
    out[fixed] = BundleCascadeRouter(pred, fixed, info=fixed_info)
    if bundle.cascade.pre_route:
        plain = f"bundle:{_point(bundle)}"  # the pre-route alone, for reference
        out[plain] = BundleRouter(pred, plain, info=fixed_info)
    if not bundle.cascade.signal.fixed:
        name = f"bundle+cascade-{bundle.cascade.signal.name}"
        out[name] = BundleCascadeRouter(pred, name, info={"identity": identity}, sweep=True)
    return out


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
