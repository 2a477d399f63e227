"""Drift tests of live traffic against a training reference, and mixes over time.

**Embedding (or score) distribution — kernel two-sample test (MMD).** Gretton, Borgwardt, Rasch, Schölkopf,
Smola, "A Kernel Two-Sample Test", JMLR 13 (2012). With reference sample X (n rows), live sample Y (m rows) and
the Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2σ²)), σ = the median pairwise distance of the pooled sample
(the paper's median heuristic), the biased statistic is

    MMD²_b = 1/n² Σ k(x_i, x_j) + 1/m² Σ k(y_i, y_j) − 2/(nm) Σ k(x_i, y_j)  =  wᵀ K w,
    w = (1/n, …, 1/n, −1/m, …, −1/m)

and its p-value comes from B random relabellings of the pooled sample (permutation test; H0: same
distribution): p = (1 + #{b : MMD²_b(perm) ≥ MMD²_b(obs)}) / (B + 1) (Phipson & Smyth 2010: never 0). All B
statistics are one matrix product, diag(Wᵀ K W) with W the (n+m, B) weight columns. This is the test behind
alibi-detect's `MMDDrift` (permutation p-value, same kernel and bandwidth rule), reimplemented in numpy so the
server and monitor need neither TensorFlow nor PyTorch; each sample is subsampled to `max_samples` rows.

**Mixes (tier, model, category) — χ² test of homogeneity** on the 2 × k table of reference and live counts
(`scipy.stats.chi2_contingency`; categories with no count on either side dropped).

**Over time** — the log is cut into consecutive windows of `size` decisions; per window: tier mix, premium share,
$ per 1,000 answered requests and the drift p-value of that window against the reference.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency


def _subsample(A: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return A if len(A) <= k else A[np.sort(rng.choice(len(A), k, replace=False))]


def mmd_test(X: np.ndarray, Y: np.ndarray, n_permutations: int = 500, max_samples: int = 500,
             seed: int = 0) -> dict[str, Any]:
    """MMD² two-sample permutation test (module docstring): {mmd2, p_value, n_reference, n_live, bandwidth,
    n_permutations}; p_value is None when either sample has fewer than 2 rows."""
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"mmd_test: samples must be (n, d) and (m, d), got {X.shape} and {Y.shape}")
    rng = np.random.default_rng(seed)
    X, Y = _subsample(X, max_samples, rng), _subsample(Y, max_samples, rng)
    n, m = len(X), len(Y)
    out: dict[str, Any] = {"n_reference": n, "n_live": m, "n_permutations": int(n_permutations)}
    if n < 2 or m < 2:
        return {**out, "mmd2": None, "p_value": None, "bandwidth": None}
    Z = np.vstack([X, Y])
    sq = np.einsum("ij,ij->i", Z, Z)
    D2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T, 0.0)
    off = D2[np.triu_indices(n + m, 1)]
    sigma = math.sqrt(float(np.median(off))) if off.size else 0.0
    if sigma <= 0:  # every point identical (or nearly): fall back to the mean distance, else no signal at all
        sigma = math.sqrt(float(off.mean())) if off.size and off.mean() > 0 else 1.0
    K = np.exp(-D2 / (2.0 * sigma * sigma))
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    obs = float(w @ K @ w)
    W = np.stack([w[rng.permutation(n + m)] for _ in range(int(n_permutations))], axis=1)
    perm = np.einsum("ib,ib->b", W, K @ W)
    p = (1.0 + float(np.sum(perm >= obs - 1e-12))) / (n_permutations + 1.0)
    return {**out, "mmd2": obs, "p_value": p, "bandwidth": sigma}


def mix_test(reference: Mapping[Any, float], live: Mapping[Any, float]) -> dict[str, Any]:
    """χ² homogeneity test of two count tables (category → count): {statistic, p_value, dof, reference_share,
    live_share}; p_value None when fewer than two categories are present or a side is empty."""
    keys = sorted(set(reference) | set(live), key=str)
    ref = np.array([float(reference.get(k, 0)) for k in keys])
    liv = np.array([float(live.get(k, 0)) for k in keys])
    keep = (ref + liv) > 0
    keys, ref, liv = [k for k, ok in zip(keys, keep) if ok], ref[keep], liv[keep]
    shares = {"reference_share": {str(k): float(v / ref.sum()) if ref.sum() else None for k, v in zip(keys, ref)},
              "live_share": {str(k): float(v / liv.sum()) if liv.sum() else None for k, v in zip(keys, liv)}}
    if len(keys) < 2 or ref.sum() == 0 or liv.sum() == 0:
        return {"statistic": None, "p_value": None, "dof": 0, **shares}
    stat, p, dof, _ = chi2_contingency(np.vstack([ref, liv]))
    return {"statistic": float(stat), "p_value": float(p), "dof": int(dof), **shares}


def windows(n: int, size: int) -> list[slice]:
    """Consecutive windows of `size` rows over n rows; a short tail (< size/2) joins the last full window."""
    if n <= 0:
        return []
    size = max(1, int(size))
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < size / 2:
        bounds.pop(-2)
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def mix_over_time(decisions: pd.DataFrame, size: int, tiers: Sequence[int], premium: str | None,
                  reference: np.ndarray | None = None, sketch_of: Any = None, n_permutations: int = 200,
                  seed: int = 0) -> pd.DataFrame:
    """One row per window (`windows`): t_start, t_end, n, tier_<t> shares, premium_share, usd_per_1k (over the
    window's answered requests), refused_share; drift_p_value against `reference` when given (`sketch_of(frame)`
    → the window's (k, d) sample)."""
    rows = []
    for k, sl in enumerate(windows(len(decisions), size)):
        w = decisions.iloc[sl]
        routed = w[w["model"].notna()]
        row: dict[str, Any] = {"window": k, "t_start": float(w["ts"].min()), "t_end": float(w["ts"].max()),
                               "n": int(len(w)), "refused_share": float(w["model"].isna().mean())}
        tier = pd.to_numeric(routed["tier"], errors="coerce")
        for t in tiers:
            row[f"tier_{int(t)}"] = float((tier == t).mean()) if len(routed) else math.nan
        row["premium_share"] = float((routed["model"] == premium).mean()) if len(routed) and premium else math.nan
        cost = pd.to_numeric(w["cost_usd"], errors="coerce").dropna()
        row["usd_per_1k"] = float(1000.0 * cost.mean()) if len(cost) else math.nan
        if reference is not None and sketch_of is not None:
            Y = sketch_of(w)
            row["drift_p_value"] = (mmd_test(reference, Y, n_permutations, seed=seed + k)["p_value"]
                                    if Y is not None and len(Y) >= 2 else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)
