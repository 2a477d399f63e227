"""Small helpers shared by the baseline classifiers: input checks, tier ↔ model mapping, config paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: project root (the directory holding `configs/`), used to resolve relative config paths
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ClassifierInputError(ValueError):
    """fit/predict inputs have the wrong shape, range or type."""


def check_fit_inputs(
    queries: Sequence[str], targets: Any, model_names: Sequence[str], *, allow_nan: bool = True, name: str = "targets"
) -> tuple[list[str], np.ndarray, list[str]]:
    """Validate `fit` inputs; NaN in targets means "outcome not observed" and is masked by every baseline."""
    queries = [queries] if isinstance(queries, str) else list(queries)
    model_names = list(model_names)
    if not model_names:
        raise ClassifierInputError("model_names is empty")
    if len(set(model_names)) != len(model_names):
        raise ClassifierInputError(f"model_names has duplicates: {model_names}")
    bad = [i for i, q in enumerate(queries) if not isinstance(q, str)]
    if bad:
        raise ClassifierInputError(f"queries[{bad[0]}] is a {type(queries[bad[0]]).__name__}, not a str")
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1 and len(model_names) == 1:
        y = y[:, None]
    if y.shape != (len(queries), len(model_names)):
        raise ClassifierInputError(
            f"{name} has shape {y.shape}, expected (n_queries, n_models) = ({len(queries)}, {len(model_names)})"
        )
    finite = np.isfinite(y)
    if not allow_nan and not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise ClassifierInputError(f"{name}[{i}, {j}] ({model_names[j]}) is not finite")
    if np.isinf(y).any():
        i, j = np.argwhere(np.isinf(y))[0]
        raise ClassifierInputError(f"{name}[{i}, {j}] ({model_names[j]}) is infinite")
    out = finite & ((y < 0) | (y > 1))
    if out.any():
        i, j = np.argwhere(out)[0]
        raise ClassifierInputError(f"{name}[{i}, {j}] = {y[i, j]} ({model_names[j]}) is outside [0, 1]")
    return queries, y, model_names


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


def to_plain(obj: Any) -> Any:
    """OmegaConf containers (from Hydra) → plain dict/list, so configs stay JSON-serialisable."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        pass
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
