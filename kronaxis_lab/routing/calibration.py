"""Calibrate a policy's parameter (τ, λ, ...) on the user's own traffic to hit a target.

Targets (measured per query on the calibration split, with the recorded outcomes):
- `premium_share`: fraction of queries sent to the premium model, as close to value as possible from below;
- `usd_per_1k`: $ per 1,000 queries, as close to the budget as possible from below;
- `pct_premium_accuracy`: accuracy ≥ value × always-premium accuracy (the cheapest such point).

The chosen parameter is then applied unchanged to the held-out split, and the achieved value there is
reported with a percentile bootstrap CI over queries — the honest answer to "will this hold on new
traffic?".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kronaxis_lab.data.tables import Matrices

TARGETS = ("premium_share", "usd_per_1k", "pct_premium_accuracy")


def _per_query(ch: np.ndarray, mats: Matrices, premium_idx: int) -> dict[str, np.ndarray]:
    rows = np.arange(mats.n)
    return {"premium": (ch == premium_idx).astype(float), "cost": mats.costs[rows, ch],
            "score": mats.scores[rows, ch], "p_score": mats.scores[:, premium_idx]}


def _metric(target: str, q: dict[str, np.ndarray], idx: np.ndarray | None = None) -> np.ndarray | float:
    """The target metric, on all queries (idx=None) or per bootstrap resample (idx: (B, n) indices)."""
    take = (lambda a: a) if idx is None else (lambda a: a[idx])
    ax = -1
    if target == "premium_share":
        return take(q["premium"]).mean(axis=ax)
    if target == "usd_per_1k":
        return 1000.0 * take(q["cost"]).mean(axis=ax)
    acc, p_acc = take(q["score"]).mean(axis=ax), take(q["p_score"]).mean(axis=ax)
    return np.divide(acc, p_acc, out=np.full(np.shape(acc), np.nan), where=np.asarray(p_acc) > 0)


def pick(target: str, value: float, metric: np.ndarray, accuracy: np.ndarray, cost: np.ndarray) -> int:
    """Index of the operating point that meets the target best (see module docstring)."""
    if target in ("premium_share", "usd_per_1k"):
        ok = np.flatnonzero(metric <= value + 1e-12)
        if ok.size == 0:
            return int(np.argmin(metric))
        # hit the budget: the largest value not above it (ties: more accurate, then cheaper)
        return int(ok[np.lexsort((cost[ok], -accuracy[ok], -metric[ok]))[0]])
    ok = np.flatnonzero(metric >= value - 1e-12)
    if ok.size == 0:
        return int(np.argmax(accuracy))
    return int(ok[np.lexsort((-accuracy[ok], cost[ok]))[0]])


def middle_of_run(choices: np.ndarray, i: int) -> int:
    """The middle of the run of grid points around `i` whose val decisions are all the same as at `i`.

    `pick` returns the first grid point that meets the target, which sits right at a decision boundary (λ just
    past the point where some queries flip); any perturbation of P̂ — an int8 graph, a little drift — then
    flips them back. Every point of the run makes the same val decisions, so the middle one scores the same
    on val and keeps the widest margin on both sides."""
    same = (choices == choices[i]).all(axis=1)
    lo = hi = i
    while lo > 0 and same[lo - 1]:
        lo -= 1
    while hi < len(same) - 1 and same[hi + 1]:
        hi += 1
    if lo == 0 or hi == len(same) - 1:  # a run to the grid's end (e.g. all-premium up to λ = ∞): no far side to
        return i                          # keep a margin from, and its lower edge is its cheapest point on new traffic
    return (lo + hi) // 2


def calibrate_router(router, ctx, P_test: np.ndarray, cost_test: np.ndarray, target: str, value: float,
                     n_boot: int = 1000, ci: float = 0.95, seed: int = 0, grid_points: int = 201) -> dict[str, Any]:
    """Pick the policy parameter on ctx.val, apply it to ctx.test, report achieved value + bootstrap CI.

    `router`: a PolicyRouter (its `policy` and `predictions(ctx, mats)`); `ctx`: its ReplayContext, whose
    cost model prices val exactly as it priced `cost_test`."""
    if target not in TARGETS:
        raise ValueError(f"calibration target must be one of {TARGETS}, got '{target}'")
    val = ctx.val
    if val is None or val.n == 0:
        raise ValueError(f"{router.name}: calibration needs a non-empty val split")
    policy, prem = router.policy, ctx.premium_idx
    P_val = router.predictions(ctx, val)
    cost_val = ctx.expected_cost_for(val)
    policy.bind(ctx.fleet, val.queries)
    grid = np.asarray(policy.params if getattr(policy, "params", None) is not None
                      else calibration_grid(policy, P_val, cost_val, grid_points), float)
    ch_val = policy.choose(P_val, cost_val, grid)
    qs = [_per_query(c, val, prem) for c in ch_val]
    metric = np.array([_metric(target, q) for q in qs], float)
    acc = np.array([q["score"].mean() for q in qs])
    cost = np.array([q["cost"].sum() for q in qs])
    i = middle_of_run(ch_val, pick(target, float(value), metric, acc, cost))
    param = float(grid[i])

    policy.bind(ctx.fleet, ctx.test.queries)
    ch = policy.choose(P_test, cost_test, [param])[0]
    q = _per_query(ch, ctx.test, prem)
    rng = np.random.default_rng(seed)
    n = ctx.test.n
    boot = np.concatenate([_metric(target, q, rng.integers(0, n, size=(min(200, n_boot - s), n)))
                           for s in range(0, n_boot, 200)])
    lo, hi = np.nanpercentile(boot, [50 * (1 - ci), 100 - 50 * (1 - ci)])
    return {
        "target": target, "value": float(value), "param": param, "param_name": policy.name,
        "val_achieved": float(metric[i]), "test_achieved": float(_metric(target, q)),
        "test_ci": [float(lo), float(hi)], "ci_level": ci, "n_boot": int(n_boot),
        "test_accuracy": float(q["score"].mean()), "test_cost_usd": float(q["cost"].sum()),
        "test_premium_share": float(q["premium"].mean()),
    }


def calibration_grid(policy, P, cost, points: int, max_breaks: int = 2000) -> np.ndarray:
    """A denser version of the policy's default grid, for a precise calibration, plus a point between each
    pair of adjacent breakpoints the policy reports (where a val decision changes), so no distinct set of val
    decisions is stepped over (up to `max_breaks` of them, evenly spaced by rank beyond that)."""
    base = np.asarray(policy.default_params(P, cost), float)
    finite = base[np.isfinite(base)]
    if finite.size < 2:
        return base
    breaks = policy.breakpoints(P, cost)
    if breaks is not None and breaks.size:
        breaks = np.sort(breaks)
        if breaks.size > max_breaks:
            breaks = breaks[np.linspace(0, breaks.size - 1, max_breaks).round().astype(int)]
        between = np.sqrt(breaks[:-1] * breaks[1:]) if (breaks > 0).all() else (breaks[:-1] + breaks[1:]) / 2
        finite = np.concatenate([finite, between, [breaks[0] / 2, breaks[-1] * 2]])
    dense = np.linspace(finite.min(), finite.max(), points)
    pos = finite[finite > 0]
    if pos.size >= 2 and pos.max() / pos.min() > 100:  # wide positive ranges (λ): add a geometric grid too
        dense = np.concatenate([dense, np.geomspace(pos.min(), pos.max(), points)])
    extra = base[~np.isfinite(base)]
    out = np.unique(np.concatenate([dense, finite, extra, [0.0] if np.any(base == 0) else []]))
    return out[::-1] if base[0] > base[-1] else out
