"""Small helpers shared by the baseline classifiers: tier ↔ model mapping, config paths.

Input checks and `to_plain` are part of the contract: kronaxis_lab/classifiers/base.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

#: project root (the directory holding `configs/`), used to resolve relative config paths
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def model_tiers(n_models: int, n_tiers: int) -> np.ndarray:
    """Tier index of each model, models ordered cheapest first.

    With at least as many models as tiers the order is cut into `n_tiers` equal groups,
    tier(j) = ⌊j·T/m⌋; with fewer models they are spread over the tiers, tier(j) = round(j·(T−1)/(m−1)),
    so the cheapest model is always the lowest tier and the dearest always the highest.
    """
    if n_models <= 0 or n_tiers <= 0:
        raise ValueError(f"need at least one model and one tier (got {n_models} models, {n_tiers} tiers)")
    j = np.arange(n_models)
    if n_models >= n_tiers:
        return (j * n_tiers) // n_models
    if n_models == 1:
        return np.array([n_tiers - 1])
    return np.floor(j * (n_tiers - 1) / (n_models - 1) + 0.5).astype(int)


def tier_of_models(
    model_names: Sequence[str], tiers: Sequence[str], explicit: Mapping[str, str | int] | None = None
) -> np.ndarray:
    """Tier index per model: from `explicit` {model: tier name or index} where given (e.g. the fleet config's
    `tier:`), else by position in the cheapest-first model order (`model_tiers`)."""
    idx = model_tiers(len(model_names), len(tiers))
    if explicit:
        pos = {t: i for i, t in enumerate(tiers)}
        for model, tier in explicit.items():
            if isinstance(tier, (int, np.integer)) and not isinstance(tier, bool):
                if not 0 <= tier < len(tiers):
                    raise ValueError(f"model_tiers: tier {tier} of model '{model}' is outside 0..{len(tiers) - 1}")
                t = int(tier)
            elif tier in pos:
                t = pos[tier]
            else:
                raise ValueError(f"model_tiers: tier '{tier}' of model '{model}' is not one of {list(tiers)}")
            if model in model_names:
                idx[list(model_names).index(model)] = t
    return idx


def resolve_config_path(path: str | Path) -> Path:
    """A config file path as given, else relative to the project root (so `configs/...` works from anywhere)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    q = PROJECT_ROOT / p
    return q if q.exists() else p
