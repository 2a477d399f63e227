"""Policies: turn per-model success predictions P̂ (n, m) into model choices, batch-first.

Every policy has one sweep parameter; `choose(P, cost, params)` returns choices of shape (k, n) for k
parameter values at once, which is what traces a router's cost–quality curve. Columns are in fleet
order (cheapest tier first). `cost` is the *expected* cost per query and model known at decision time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

_CHUNK = 1 << 22  # elements per (k-chunk × n × m) block: bounds memory on 1M-query sweeps


class Policy(ABC):
    name: str = "policy"

    def bind(self, fleet, queries) -> "Policy":
        """Attach per-run context (fleet latency profile, query tasks) before choosing; default: none."""
        return self

    @abstractmethod
    def default_params(self, P: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The sweep grid used when none is configured."""

    @abstractmethod
    def choose(self, P: np.ndarray, cost: np.ndarray, params: Sequence[float] | np.ndarray) -> np.ndarray:
        """(k, n) int32 choices for k parameter values."""

    def breakpoints(self, P: np.ndarray, cost: np.ndarray) -> np.ndarray | None:
        """Parameter values at which some row's choice can change (for an exact calibration), or None when the
        policy does not know them; a grid then stands in."""
        return None

    def sweep(self, P: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        given = getattr(self, "params", None)
        params = np.asarray(given if given is not None else self.default_params(P, cost), float)
        return params, self.choose(P, cost, params)


def _rows_per_chunk(k: int, m: int) -> int:
    return max(1, _CHUNK // max(1, k * m))


class WillingnessToPay(Policy):
    """choice_i(λ) = argmax_j  λ·P̂_ij − cost_ij   (λ = $ the user would pay per unit of expected quality).

    λ = 0 picks the cheapest model; λ → ∞ picks the most likely to succeed. The default grid is
    geometric around the typical cost scale of the fleet, so the sweep spans the whole curve.
    """

    name = "wtp"

    def __init__(self, params: Sequence[float] | None = None, num: int = 60):
        self.params = None if params is None else np.asarray(params, float)
        self.num = int(num)

    def default_params(self, P: np.ndarray, cost: np.ndarray) -> np.ndarray:
        scale = float(np.median(cost.max(axis=1) - cost.min(axis=1))) if cost.size else 1.0
        scale = scale if scale > 0 else float(np.median(cost)) or 1.0
        return np.concatenate([[0.0], scale * np.logspace(-2, 4, self.num - 2), [np.inf]])

    def breakpoints(self, P, cost):
        """Every λ where two models' utilities cross on some row: λ = Δcost / ΔP̂ over the pairs where the
        dearer model is the likelier one. Choices only change there, so a grid between them is exact where
        a fixed grid can step over a whole band of near-equal P̂ (an under-trained model's)."""
        P, cost = np.asarray(P, float), np.asarray(cost, float)
        j, k = np.triu_indices(P.shape[1], 1)
        dP, dc = P[:, j] - P[:, k], cost[:, j] - cost[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = dc / dP
        ok = np.isfinite(lam) & (lam > 0) & (dP * dc > 0)
        return np.unique(lam[ok])

    def choose(self, P, cost, params):
        params = np.asarray(params, float)
        if np.any(params < 0) or np.any(np.isnan(params)):
            raise ValueError(f"willingness-to-pay λ must be ≥ 0, got {params}")
        if P.shape[0] * len(params) <= 4096:  # serving-sized calls: a direct argmax beats the envelope walk
            with np.errstate(invalid="ignore"):
                return np.stack([_argmax_lambda(P, cost, lam) for lam in params]).astype(np.int32)
        order = np.argsort(params, kind="stable")
        out = np.empty((len(params), P.shape[0]), np.int32)
        for s in range(0, P.shape[0], _ENVELOPE_ROWS):
            rows = slice(s, s + _ENVELOPE_ROWS)
            out[order, rows] = _envelope_choices(P[rows], cost[rows], params[order])
        return out


_ENVELOPE_ROWS = 1 << 17


def _argmax_lambda(P: np.ndarray, c: np.ndarray, lam: float) -> np.ndarray:
    """argmax_j λ·P_j − c_j with the envelope's tie rules (λ = 0: cheapest, then likeliest; ∞: likeliest, then
    cheapest)."""
    if np.isinf(lam):
        best = P.max(axis=1, keepdims=True)
        return np.where(P == best, -c, -np.inf).argmax(axis=1)
    u = lam * P - c
    top = u.max(axis=1, keepdims=True)
    atol = 1e-12 * max(1.0, float(np.abs(top).max()))
    # = np.isclose(u, top, rtol=0, atol=atol), written out: isclose's argument checks cost more than this
    # whole function on a serving-sized row
    tie = ((np.abs(u - top) <= atol) & np.isfinite(top)) | (u == top)
    key = np.where(tie, -c if lam == 0 else P, -np.inf)
    return key.argmax(axis=1)


def _envelope_choices(P: np.ndarray, c: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """argmax_j λ·P_j − c_j for every λ in the ascending grid `lams`, without a pass per λ.

    Per query the utilities are m lines in λ; the choice follows their upper envelope, which has at most
    m segments. Walk the envelope for all queries at once (≤ m vectorised steps: from the cheapest line,
    jump to the steeper line that crosses first), then paint each segment onto the λ grid with one
    bincount + cumsum. Ties: at λ = 0 the cheapest (then most likely) model; at λ = ∞ the most likely
    (then cheapest) model.
    """
    P = np.asarray(P, np.float64)
    c = np.asarray(c, np.float64)
    n, m = P.shape
    k = len(lams)
    rows = np.arange(n)
    cmin = c.min(axis=1, keepdims=True)
    cur = np.where(c == cmin, P, -np.inf).argmax(axis=1)
    lines, starts = [cur], [np.zeros(n)]
    active = np.ones(n, bool)
    for _ in range(m - 1):
        pc, cc = P[rows, cur][:, None], c[rows, cur][:, None]
        dP = P - pc
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = np.where(dP > 0, (c - cc) / dP, np.inf)
        lam_next = cross.min(axis=1)
        nxt = np.where(cross == lam_next[:, None], P, -np.inf).argmax(axis=1)
        active &= np.isfinite(lam_next)
        if not active.any():
            break
        cur = np.where(active, nxt, cur)
        lines.append(cur)
        starts.append(np.where(active, np.maximum(lam_next, starts[-1]), np.inf))
    L = np.stack(lines, axis=1)  # (n, s) envelope line per segment
    S = np.stack(starts, axis=1)  # (n, s) λ where each segment starts (inf = unused)
    pos = np.searchsorted(lams, S, side="left")  # first grid index on that segment
    delta = np.diff(L, axis=1, prepend=0).astype(np.float64)
    flat = (pos * n + rows[:, None]).ravel()
    keep = pos.ravel() < k
    acc = np.bincount(flat[keep], weights=delta.ravel()[keep], minlength=k * n).reshape(k, n)
    # deltas and running sums are model indices (|·| < m): small ints keep the cumsum cheap
    small = np.int8 if m < 128 else np.int32
    return np.cumsum(np.rint(acc).astype(small), axis=0, dtype=small).astype(np.int32)


class Threshold(Policy):
    """Complexity threshold: the cheapest model (by expected cost) with P̂_ij ≥ τ; if none, argmax_j P̂_ij."""

    name = "threshold"

    def __init__(self, params: Sequence[float] | None = None, num: int = 51):
        self.params = None if params is None else np.asarray(params, float)
        self.num = int(num)

    def default_params(self, P, cost):
        return np.linspace(0.0, 1.0, self.num)

    def choose(self, P, cost, params):
        params = np.asarray(params, float)
        n, m = P.shape
        order = np.argsort(cost, axis=1, kind="stable")  # per query: models by expected cost
        P_sorted = np.take_along_axis(P, order, axis=1)
        best = P.argmax(axis=1)
        out = np.empty((len(params), n), np.int32)
        for a, tau in enumerate(params):
            ok = P_sorted >= tau
            first = ok.argmax(axis=1)
            pick = np.take_along_axis(order, first[:, None], axis=1)[:, 0]
            out[a] = np.where(ok.any(axis=1), pick, best)
        return out


class StrongWinThreshold(Policy):
    """Two-model routing (RouteLLM style): send to the strong model iff the strong-win score ≥ τ.

    The score is P̂_strong − P̂_weak (how much the premium model is predicted to help). The default grid
    takes τ at the score's quantiles so the sweep covers every premium-call share from 0 to 1.
    """

    name = "strong_win"

    def __init__(self, params: Sequence[float] | None = None, num: int = 51, strong: int = -1, weak: int = 0):
        self.params = None if params is None else np.asarray(params, float)
        self.num, self.strong, self.weak = int(num), strong, weak

    def win_score(self, P: np.ndarray) -> np.ndarray:
        return P[:, self.strong] - P[:, self.weak]

    def default_params(self, P, cost):
        s = self.win_score(P)
        q = np.quantile(s, np.linspace(0, 1, self.num - 1)) if len(s) else np.zeros(self.num - 1)
        return np.unique(np.concatenate([q, [np.inf]]))[::-1]

    def choose(self, P, cost, params):
        m = P.shape[1]
        strong, weak = self.strong % m, self.weak % m
        s = self.win_score(P)
        params = np.asarray(params, float)
        return np.where(s[None, :] >= params[:, None], strong, weak).astype(np.int32)


class LatencySLO(Policy):
    """Only models whose latency profile fits the SLO (fleet `latency_p95_s` ≤ `slo_s`, unknown = fits),
    then the inner policy. If no model fits, the fastest known model is the only one allowed."""

    def __init__(self, inner: Policy, slo_s: float, percentile: str = "p95"):
        self.inner, self.slo_s, self.percentile = inner, float(slo_s), percentile
        self.name = f"{inner.name}@slo{slo_s:g}s"
        self.params = getattr(inner, "params", None)
        self.allowed_: np.ndarray | None = None

    def bind(self, fleet, queries):
        lat = np.array([getattr(m, f"latency_{self.percentile}_s") for m in fleet.models], dtype=float)
        allowed = np.isnan(lat) | (lat <= self.slo_s)
        if not allowed.any():
            allowed = lat == np.nanmin(lat)
        self.allowed_ = allowed
        self.inner.bind(fleet, queries)
        return self

    def _mask(self, P, cost):
        if self.allowed_ is None:
            raise RuntimeError("LatencySLO.bind(fleet, queries) must be called first")
        return np.where(self.allowed_, P, -1.0), np.where(self.allowed_, cost, np.inf)

    def default_params(self, P, cost):
        return self.inner.default_params(*self._mask(P, cost))

    def breakpoints(self, P, cost):
        Pm, cm = self._mask(P, cost)
        return self.inner.breakpoints(Pm, np.where(np.isinf(cm), np.finfo(float).max / 4, cm))

    def choose(self, P, cost, params):
        Pm, cm = self._mask(P, cost)
        # λ·(−1) − ∞ and P̂ = −1 < τ keep disallowed models out of every inner policy
        return self.inner.choose(Pm, np.where(np.isinf(cm), np.finfo(float).max / 4, cm), params)


class TaskCostCeiling(Policy):
    """Per task type: the cheapest model whose P̂ ≥ min_score[task] within the task's cost ceiling
    (USD per query); if none qualifies, the most likely model under the ceiling (or the cheapest model
    if the ceiling excludes all). The sweep parameter δ shifts every task's minimum score by δ."""

    name = "task_ceiling"

    def __init__(self, min_score: dict, max_cost: dict | None = None, params=None, num: int = 41):
        self.min_score = dict(min_score)
        self.max_cost = dict(max_cost or {})
        self.params = None if params is None else np.asarray(params, float)
        self.num = int(num)
        self.tasks_: np.ndarray | None = None

    def bind(self, fleet, queries):
        self.tasks_ = queries["task"].astype(str).to_numpy()
        return self

    def _per_query(self, table: dict, default: float) -> np.ndarray:
        if self.tasks_ is None:
            raise RuntimeError("TaskCostCeiling.bind(fleet, queries) must be called first")
        d = table.get("default", default)
        return np.array([table.get(t, d) for t in self.tasks_], dtype=float)

    def default_params(self, P, cost):
        return np.linspace(-1.0, 1.0, self.num)

    def choose(self, P, cost, params):
        floor = self._per_query(self.min_score, 0.5)
        ceil = self._per_query(self.max_cost, np.inf)
        n = P.shape[0]
        within = cost <= ceil[:, None]
        order = np.argsort(cost, axis=1, kind="stable")
        P_sorted = np.take_along_axis(P, order, axis=1)
        within_sorted = np.take_along_axis(within, order, axis=1)
        best_within = np.where(within, P, -np.inf).argmax(axis=1)
        best_within = np.where(within.any(axis=1), best_within, cost.argmin(axis=1))
        out = np.empty((len(params), n), np.int32)
        for a, delta in enumerate(np.asarray(params, float)):
            ok = within_sorted & (P_sorted >= (floor + delta)[:, None])
            pick = np.take_along_axis(order, ok.argmax(axis=1)[:, None], axis=1)[:, 0]
            out[a] = np.where(ok.any(axis=1), pick, best_within)
        return out
