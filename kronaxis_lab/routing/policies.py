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

    @abstractmethod
    def default_params(self, P: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The sweep grid used when none is configured."""

    @abstractmethod
    def choose(self, P: np.ndarray, cost: np.ndarray, params: Sequence[float] | np.ndarray) -> np.ndarray:
        """(k, n) int32 choices for k parameter values."""

    def sweep(self, P: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = np.asarray(self.params if getattr(self, "params", None) is not None else self.default_params(P, cost), float)
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

    def choose(self, P, cost, params):
        params = np.asarray(params, float)
        n, m = P.shape
        out = np.empty((len(params), n), np.int32)
        P32, c32 = P.astype(np.float32), cost.astype(np.float32)
        step = _rows_per_chunk(1, m)
        for a, lam in enumerate(params):
            for s in range(0, n, step):
                if np.isinf(lam):
                    # most likely to succeed; ties → cheaper
                    u = P32[s:s + step] - 1e-9 * c32[s:s + step] / max(float(c32.max()), 1e-30)
                else:
                    u = np.float32(lam) * P32[s:s + step] - c32[s:s + step]
                out[a, s:s + step] = u.argmax(axis=1)
        return out


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
