"""Replay: run routers over a split of recorded outcomes and compute every routing metric.

The replay backend is the outcome table itself: a router's choice for a query is answered by the
recorded (score, correct, cost) of that model on that query. All per-query work is vectorised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab import metrics as M
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices, RoutingDataset
from kronaxis_lab.routing.costs import CostModel, TokenCounter
from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE, operating_point
from kronaxis_lab.routing.routers import ReplayContext, Router, RouteResult

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    dataset: str
    split: str
    model_names: list[str]
    premium: str
    cheapest: str
    n_queries: int
    routers: dict[str, dict[str, Any]]  # name → metrics (JSON-ready)
    choices: dict[str, np.ndarray] = field(default_factory=dict)  # name → (n,) choice at the operating point
    queries: pd.DataFrame | None = None
    ctx: ReplayContext | None = None
    results: dict[str, RouteResult] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        cols = ["accuracy", "cost_usd", "cpao", "savings_vs_premium", "premium_share", "aiq", "max_accuracy",
                "savings_at_95pct_premium", "cpao_at_95pct_premium", "apgr", "cpt50", "cpt80", "oracle_gap"]
        df = pd.DataFrame.from_dict(self.routers, orient="index")
        return df[[c for c in cols if c in df.columns]]

    def category_table(self, router: str, by: str = "category") -> pd.DataFrame:
        """Per category: share of queries, model mix, cost vs premium, accuracy vs premium."""
        t = self.ctx.test
        ch = self.choices[router]
        prem = self.ctx.premium_idx
        rows = np.arange(t.n)
        rr = self.results.get(router)
        extra = 0.0
        if rr is not None and rr.extra_cost is not None:
            extra = rr.extra_cost[self.routers[router].get("operating_point", {}).get("index", 0)]
        df = pd.DataFrame({
            "group": t.queries[by].fillna("unknown").to_numpy(),
            "model": np.array(self.model_names, dtype=object)[ch],
            "score": t.scores[rows, ch], "cost": t.costs[rows, ch] + extra,
            "p_score": t.scores[:, prem], "p_cost": t.costs[:, prem],
        })
        out = []
        for g, d in df.groupby("group", sort=True):
            mix = d["model"].value_counts(normalize=True)
            out.append({
                by: g,
                "share_of_queries": len(d) / len(df),
                "model_mix": ", ".join(f"{m} {s:.0%}" for m, s in mix.head(3).items()) + (" …" if len(mix) > 3 else ""),
                "cost_vs_premium": d["cost"].sum() / d["p_cost"].sum() if d["p_cost"].sum() > 0 else float("nan"),
                "accuracy": d["score"].mean(),
                "premium_accuracy": d["p_score"].mean(),
            })
        return pd.DataFrame(out)


def replay(ds: RoutingDataset, routers: Mapping[str, Router] | list[Router], split: str = "test",
           seed: int = 0, train_split: str | list[str] = "train", val_split: str = "val",
           token_counter: TokenCounter | None = None, cost_model: CostModel | None = None) -> ReplayResult:
    """Replay `split` of a dataset; routers learn from `train_split` (and `val_split`) only. Expected costs
    come from `cost_model`, else one fitted on train with prompt tokens from `token_counter`."""
    test = ds.matrices(split)
    if test.n == 0:
        raise ValueError(f"{ds.name}: split '{split}' has no query with a complete set of outcomes")
    return replay_matrices(test, ds.fleet, routers, train=ds.matrices(train_split), val=ds.matrices(val_split),
                           seed=seed, dataset=ds.name, split=split, token_counter=token_counter,
                           cost_model=cost_model)


def replay_matrices(test: Matrices, fleet: Fleet, routers: Mapping[str, Router] | list[Router],
                    train: Matrices | None = None, val: Matrices | None = None, seed: int = 0,
                    dataset: str = "dataset", split: str = "test", token_counter: TokenCounter | None = None,
                    cost_model: CostModel | None = None) -> ReplayResult:
    """The engine on wide matrices (what `replay` calls after pivoting the outcome table)."""
    ctx = ReplayContext(test=test, fleet=fleet, train=train, val=val, seed=seed, cost_model=cost_model,
                        token_counter=token_counter)
    results: dict[str, RouteResult] = {}
    for r in (routers.values() if isinstance(routers, Mapping) else routers):
        for name, rr in r.route(ctx).items():
            if name in results:
                raise ValueError(f"two routers are both named '{name}'")
            results[name] = rr

    prem, cheap = ctx.premium_idx, ctx.cheapest_idx
    premium_cost = float(test.costs[:, prem].sum())
    premium_acc = float(test.scores[:, prem].mean())
    two_model = len(fleet.names) == 2
    weak_q = float(test.scores[:, cheap].mean()) if two_model else None
    strong_q = premium_acc if two_model else None

    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, rr in results.items():
        cost_k, acc_k = M.choices_metrics_batch(rr.choices, test.scores, test.costs, test.correct, rr.extra_cost)
        share_k = (rr.choices == prem).mean(axis=1)
        curves[name] = (np.asarray(cost_k, float), np.asarray(acc_k, float), share_k)
    cmin, cmax = M.routerbench_cost_range([(c, a) for c, a, _ in curves.values()])

    def op_index(name: str) -> int:
        rr = results[name]
        cost_k, acc_k, _ = curves[name]
        if rr.headline is not None:
            return rr.headline
        return operating_point(cost_k, acc_k, PREMIUM_ACCURACY_SHARE * premium_acc)

    oracle_acc = float(curves["oracle"][1][op_index("oracle")]) if "oracle" in curves else None
    out: dict[str, dict[str, Any]] = {}
    chosen: dict[str, np.ndarray] = {}
    for name, rr in results.items():
        cost_k, acc_k, share_k = curves[name]
        i = op_index(name)
        ch = rr.choices[i]
        chosen[name] = ch
        point = M.summarize_choice(ch, test.scores, test.costs, test.correct, prem,
                                   None if rr.extra_cost is None else rr.extra_cost[i])
        summary = M.router_summary(cost_k, acc_k, share_k, cost_min=cmin, cost_max=cmax,
                                   premium_cost=premium_cost, premium_quality=premium_acc, n_queries=test.n,
                                   weak_quality=weak_q, strong_quality=strong_q)
        entry: dict[str, Any] = {
            "n_queries": int(test.n),
            "kind": "sweep" if rr.is_sweep else "fixed",
            "accuracy": float(point["accuracy"]),
            "cost_usd": float(point["cost_usd"]),
            "cost_per_query": float(point["cost_per_query"]),
            "cpao": M.json_float(point["cpao"]),
            "n_correct": float(point["n_correct"]),
            "premium_share": float(point["premium_share"]),
            "savings_vs_premium": M.json_float(point["savings_vs_premium"]),
            "model_mix": {fleet.names[int(k)]: float(v) for k, v in point["model_mix"].items()},
            **summary,
            "oracle_gap": None if oracle_acc is None else float(M.oracle_gap(point["accuracy"], oracle_acc)),
            "curve": [[float(c), float(a)] for c, a in zip(cost_k, acc_k)],
            "curve_premium_share": [float(s) for s in share_k],
        }
        if rr.params is not None:
            entry["operating_point"] = {rr.param_name or "param": M.json_float(float(rr.params[i])), "index": i}
            entry["params"] = [M.json_float(float(p)) for p in rr.params]
        entry.update(rr.info)
        out[name] = entry
    return ReplayResult(dataset=dataset, split=split, model_names=list(fleet.names), premium=fleet.premium,
                        cheapest=fleet.cheapest, n_queries=int(test.n), routers=out, choices=chosen,
                        queries=test.queries, ctx=ctx, results=results)



def _extra(rr: RouteResult, idx: np.ndarray) -> np.ndarray | None:
    return None if rr.extra_cost is None else rr.extra_cost[:, idx]


def paired_bootstrap(result: ReplayResult, a: str, others: Sequence[str], n_boot: int = 500, seed: int = 0,
                     ci: float = 0.95) -> dict[str, dict[str, dict[str, float]]]:
    """Paired bootstrap over the replayed queries of the differences a − b (b in `others`) in AIQ and in
    savings at 95 % of premium accuracy: every router (and the premium reference) sees the same resampled
    queries, and the AIQ cost range is recomputed over every replayed router on each resample, as in the
    replay itself.

    Returns ``{b: {metric: {"diff", "lo", "hi", "p_a_better", "n"}}}``; ``diff`` is on the full split,
    ``lo``/``hi`` the percentile interval, ``p_a_better`` the share of resamples where a > b, ``n`` the
    resamples where both are defined (savings is undefined when a hull never reaches 95 % of premium accuracy).
    """
    others = list(others)
    for name in (a, *others):
        if name not in result.results:
            raise KeyError(f"paired_bootstrap: no router '{name}' in this replay (have {sorted(result.results)})")
    test, prem = result.ctx.test, result.ctx.premium_idx
    rng = np.random.default_rng(seed)
    names, wanted = list(result.results), [a, *others]

    def stats(idx: np.ndarray) -> np.ndarray:  # (len(wanted), 2): AIQ, savings per wanted router
        s, c, k = test.scores[idx], test.costs[idx], test.correct[idx]
        curves = {n: M.choices_metrics_batch(result.results[n].choices[:, idx], s, c, k, _extra(result.results[n], idx))
                  for n in names}
        _, cmax = M.routerbench_cost_range(list(curves.values()))
        p_cost, target = float(c[:, prem].sum()), PREMIUM_ACCURACY_SHARE * float(s[:, prem].mean())
        out = np.full((len(wanted), 2), np.nan)
        for j, n in enumerate(wanted):
            cost_k, acc_k = curves[n]
            if cmax > 0:
                out[j, 0] = M.aiq(cost_k, acc_k, 0.0, cmax)
            sav = M.savings_at_quality(cost_k, acc_k, target, p_cost) if p_cost > 0 else None
            out[j, 1] = np.nan if sav is None else sav
        return out

    full = stats(np.arange(test.n))
    boots = np.stack([stats(rng.integers(0, test.n, test.n)) for _ in range(n_boot)])  # (B, R, 2)
    q = (1 - ci) / 2
    res: dict[str, dict[str, dict[str, float]]] = {}
    for j, b in enumerate(others, start=1):
        res[b] = {}
        for mi, metric in enumerate(("aiq", "savings_at_95pct_premium")):
            d = boots[:, 0, mi] - boots[:, j, mi]
            d = d[np.isfinite(d)]
            res[b][metric] = {"diff": float(full[0, mi] - full[j, mi]),
                              "lo": float(np.quantile(d, q)) if d.size else float("nan"),
                              "hi": float(np.quantile(d, 1 - q)) if d.size else float("nan"),
                              "p_a_better": float((d > 0).mean()) if d.size else float("nan"), "n": int(d.size)}
    return res


def paired_point_bootstrap(scores: np.ndarray, costs: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 1000,
                           ci: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired bootstrap of two routers' choices `a`, `b` ((n,) model indices) at one operating point, read
    against the recorded `scores`, `costs` (n, m): both see the same resampled queries.

    accuracy: Δ = mean_i s[i, a_i] − mean_i s[i, b_i]; cost_rel: Δ = Σ_i c[i, a_i] / Σ_i c[i, b_i] − 1 (relative
    cost change of a over b). Returns {metric: {"a", "b", "diff", "lo", "hi"}}: values on all n queries and the
    percentile interval of Δ at level `ci`. (`paired_bootstrap` above does the same for AIQ and the savings of
    whole sweeps.)"""
    rows = np.arange(len(a))
    sa, sb = scores[rows, a].astype(float), scores[rows, b].astype(float)
    ca, cb = costs[rows, a].astype(float), costs[rows, b].astype(float)
    rng = np.random.default_rng(seed)
    d_acc, d_cost = np.empty(n_boot), np.empty(n_boot)
    block = max(1, (1 << 22) // max(1, len(a)))  # resamples per block: ≤ 4M indices in memory
    for start in range(0, n_boot, block):
        idx = rng.integers(0, len(a), (min(block, n_boot - start), len(a)))
        d_acc[start:start + len(idx)] = (sa - sb)[idx].mean(axis=1)
        tb = cb[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_cost[start:start + len(idx)] = ca[idx].sum(axis=1) / tb - 1
    q = (1 - ci) / 2

    def stat(va: float, vb: float, diff: float, boots: np.ndarray) -> dict[str, float]:
        boots = boots[np.isfinite(boots)]
        lo, hi = (float(np.quantile(boots, q)), float(np.quantile(boots, 1 - q))) if boots.size else (np.nan, np.nan)
        return {"a": va, "b": vb, "diff": diff, "lo": lo, "hi": hi}

    cost_rel = float(ca.sum() / cb.sum() - 1) if cb.sum() > 0 else float("nan")
    return {"accuracy": stat(float(sa.mean()), float(sb.mean()), float(sa.mean() - sb.mean()), d_acc),
            "cost_rel": stat(float(ca.sum()), float(cb.sum()), cost_rel, d_cost)}
