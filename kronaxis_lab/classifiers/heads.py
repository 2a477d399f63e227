"""The tier predictor's two heads in numpy alone: logits → per-model probabilities, and ordinal targets.

Shared by the trained classifier (tier_predictor.py) and the ONNX bundle runtime (export/bundle.py), which
must reproduce `TierPredictor.predict_proba` without importing torch or transformers: this module imports
numpy only.

``multilabel``: P(model j answers query i well) = σ(z_ij).

``ordinal`` (cheapest sufficient tier; models sorted by cost, π_0 the cheapest — `order_by_cost`):
    logit z_{i,π_k} models P(t_i ≤ k), trained on c_{i,π_k} = max_{k' ≤ k} y_{i,π_k'}
    (`cumulative_targets`), and P(model π_k sufficient) = max_{k' ≤ k} σ(z_{i,π_k'}) (`logits_to_proba`),
    the running max making the predicted cumulative distribution monotone along the cost order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEADS = ("multilabel", "ordinal")
#: the tier predictor's `pooling` values: "cls" = the stock HF sequence classifier; "mean" (and any multi-task
#: network) = pooled_head.PooledTierModel, whose routing head is saved as this file beside the encoder
POOLINGS = ("cls", "mean")
POOLED_HEAD_FILE = "kronaxis_head.safetensors"


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def order_by_cost(costs: Sequence[float] | np.ndarray | None, n_models: int) -> list[int]:
    """Model indices cheapest first (ties keep the given order); None = the given order."""
    if costs is None:
        return list(range(n_models))
    return [int(i) for i in np.argsort(np.asarray(costs, dtype=np.float64), kind="stable")]


def running_max(x: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """out[:, order[k]] = max_{k' ≤ k} x[:, order[k']]: the running max along `order`, columns in place."""
    order = np.asarray(order, dtype=int)
    out = np.empty_like(x)
    out[:, order] = np.maximum.accumulate(x[:, order], axis=1)
    return out


def cumulative_targets(targets: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Ordinal targets c_{i,π_k} = max_{k' ≤ k} y_{i,π_k'}: "some tier at most as costly as π_k succeeds".

    NaN (outcome not observed) follows the contract's rule: c is NaN (masked) where a model at most as
    costly was not observed, unless an observed one already gives c = 1 (a success settles it).
    """
    y = np.asarray(targets, dtype=np.float64)
    c = running_max(np.nan_to_num(y, nan=0.0), order)
    idx = np.asarray(order, dtype=int)
    unknown = np.empty(y.shape, dtype=bool)
    unknown[:, idx] = np.logical_or.accumulate(np.isnan(y[:, idx]), axis=1)
    return np.where(unknown & (c < 1.0), np.nan, c)


def logits_to_proba(logits: np.ndarray, head: str, tier_order: Sequence[int]) -> np.ndarray:
    """σ(logits), plus the running max along the cost order for the ordinal head (module docstring)."""
    p = sigmoid(logits)
    if head == "ordinal":
        p = running_max(p, tier_order)
    elif head != "multilabel":
        raise ValueError(f"head must be one of {HEADS}, got '{head}'")
    return p.astype(np.float32)
