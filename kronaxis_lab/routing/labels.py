"""Training targets derived from the outcome table (wide matrices, fleet order = cheapest tier first).

- `success_targets`: per-model success, score ∈ [0, 1] kept as a soft label — the primary target.
- `cheapest_sufficient_tier`: ordinal label = index of the cheapest model whose score ≥ threshold,
  with "none sufficient" mapped to a configurable class (the premium model, the best model, or an extra
  class `m`).
- `strong_win`: RouteLLM-style 2-model label, 1 when the strong model is better than the weak one
  (score_strong − score_weak > margin), soft when scores are fractional.
- `relaxed_sufficient`: Hybrid-LLM style, model j is sufficient when score_j ≥ best score − t.
"""

from __future__ import annotations

import numpy as np

NONE_POLICIES = ("premium", "best", "extra_class")


def success_targets(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, float)
    if np.any((s < 0) | (s > 1)):
        raise ValueError("scores must lie in [0, 1]")
    return s


def cheapest_sufficient_tier(scores: np.ndarray, costs: np.ndarray | None = None, threshold: float = 0.5,
                             none: str = "premium", premium_idx: int = -1) -> np.ndarray:
    """Index of the cheapest sufficient model per query (cost order from `costs`' row means, else column order)."""
    if none not in NONE_POLICIES:
        raise ValueError(f"none must be one of {NONE_POLICIES}, got '{none}'")
    s = np.asarray(scores, float)
    n, m = s.shape
    order = np.argsort(np.asarray(costs, float).mean(axis=0), kind="stable") if costs is not None else np.arange(m)
    ok = s[:, order] >= threshold
    first = order[ok.argmax(axis=1)]
    fallback = {"premium": np.full(n, premium_idx % m), "best": s.argmax(axis=1), "extra_class": np.full(n, m)}[none]
    return np.where(ok.any(axis=1), first, fallback).astype(np.int64)


def strong_win(scores: np.ndarray, strong: int = -1, weak: int = 0, margin: float = 0.0,
               soft: bool = True) -> np.ndarray:
    s = np.asarray(scores, float)
    diff = s[:, strong] - s[:, weak]
    if soft:
        # fractional scores: the size of the strong model's advantage, clipped to [0, 1]
        return np.clip(diff - margin, 0.0, 1.0) if margin else np.clip(diff, 0.0, 1.0)
    return (diff > margin).astype(float)


def relaxed_sufficient(scores: np.ndarray, t: float = 0.1) -> np.ndarray:
    s = np.asarray(scores, float)
    return (s >= s.max(axis=1, keepdims=True) - t).astype(float)


def make_targets(kind: str, scores: np.ndarray, costs: np.ndarray | None = None, **kw) -> np.ndarray:
    """(n, m) targets of the given kind for a classifier's `fit` (multi-label success in [0, 1])."""
    if kind == "success":
        return success_targets(scores)
    if kind == "relaxed":
        return relaxed_sufficient(scores, **kw)
    if kind == "strong_win":
        y = strong_win(scores, **kw)
        out = np.zeros_like(np.asarray(scores, float))
        out[:, kw.get("strong", -1)] = y
        out[:, kw.get("weak", 0)] = 1 - y
        return out
    raise ValueError(f"unknown target kind '{kind}' (success, relaxed, strong_win)")
