"""The monitor's analysis of a decision log against the served bundle's training reference (`kronaxis-monitor`).

    ref = Reference.build(bundle, reference_queries)          # what the bundle does on its training queries
    result = analyse(read_decision_log(dir), ref, MonitorConfig(window=200))
    result["alerts"]                                          # thresholds crossed (`ALERTS`)

What is compared (each test in `drift.py`):
- **embedding drift**: the sketches (`sketch.py`) of the latest `window` decisions vs those of the reference
  queries, MMD permutation test; `drift.detected` = p < `drift_alpha`. Also per window over the whole log;
- **score drift**: the classifier's P̂ of the latest window vs its P̂ on the reference queries (same test);
- **tier mix / premium share / $ per 1k**: live (latest window, and the whole log) vs the bundle's decisions on
  the reference queries (χ² for the tier mix; the reference $ is the bundle's expected cost of its choices, the
  live $ what the upstreams reported);
- **category mix** (request `metadata.category`, where clients send it) vs the reference queries' categories;
- **shadow**: `shadow.shadow_summary` of the shadow rows (realised quality, misrouting, live CPAO with CIs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab.monitoring.decision_log import DecisionLogData
from kronaxis_lab.monitoring.drift import mix_over_time, mix_test, mmd_test
from kronaxis_lab.monitoring.shadow import shadow_summary
from kronaxis_lab.monitoring.sketch import SKETCH_DIM, text_sketch
from kronaxis_lab.serving.protocols import RouterBundle

# alert name → (what it reads from the result, direction): "below" fires when value < threshold, "above" when >
ALERTS: dict[str, tuple[str, str]] = {
    "drift_p_value": ("drift.p_value", "below"),
    "score_drift_p_value": ("score_drift.p_value", "below"),
    "tier_mix_p_value": ("tier_mix.p_value", "below"),
    "category_p_value": ("category_mix.p_value", "below"),
    "premium_share_delta": ("premium_share_delta", "above"),
    "usd_per_1k_ratio": ("usd_per_1k_ratio", "above"),
    "escalations_missed_rate": ("shadow.escalations_missed_rate.value", "above"),
    "premium_wasted_rate": ("shadow.premium_wasted_rate.value", "above"),
    "quality_vs_reference": ("shadow.quality_vs_reference.value", "below"),
}


@dataclass
class MonitorConfig:
    window: int = 200  # decisions per window
    drift_alpha: float = 0.01
    permutations: int = 500
    max_samples: int = 500
    seed: int = 0
    n_boot: int = 1000
    ci: float = 0.95
    thresholds: Mapping[str, float | None] = field(default_factory=dict)


@dataclass
class Reference:
    """The training reference: query sketches, and the bundle's P̂, tiers and expected $ on those queries."""

    sketch: np.ndarray  # (n, SKETCH_DIM)
    scores: np.ndarray | None = None  # (n, m) P̂
    tiers: np.ndarray | None = None  # (n,) tier of the bundle's choice
    models: list[str] | None = None  # (n,) chosen model
    usd_per_1k: float | None = None
    categories: dict[str, int] = field(default_factory=dict)
    n: int = 0

    @classmethod
    def build(cls, queries: pd.DataFrame, bundle: RouterBundle | None = None) -> "Reference":
        texts = queries["text"].astype(str).tolist()
        cats = queries["category"] if "category" in queries else pd.Series([None] * len(queries))
        ref = cls(sketch=text_sketch(texts, SKETCH_DIM), n=len(texts),
                  categories={str(k): int(v) for k, v in cats.dropna().value_counts().items()})
        if bundle is not None and texts:
            P = np.asarray(bundle.predict_proba(texts), dtype=float)
            choice = np.asarray(bundle.decide(P, texts), dtype=int)
            names = list(bundle.model_names)
            ref.scores, ref.models = P, [names[j] for j in choice]
            ref.tiers = bundle.fleet.tiers[choice]
            ref.usd_per_1k = float(1000 * bundle.expected_cost(texts)[np.arange(len(texts)), choice].mean())
        return ref


def write_reference_sketch(sketch: np.ndarray, path: str | Path) -> Path:
    """The drift reference the server's gauges read (`kronaxis-serve decision_log.drift_reference=<path>`)."""
    path = Path(path)
    np.savez(path, sketch=np.asarray(sketch, dtype=np.float32))
    return path


def _get(d: Mapping[str, Any], path: str) -> Any:
    for k in path.split("."):
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def evaluate_alerts(result: Mapping[str, Any], thresholds: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Every configured threshold (`ALERTS`) the result crosses."""
    out = []
    for name, limit in thresholds.items():
        if limit is None or name not in ALERTS:
            continue
        path, direction = ALERTS[name]
        v = _get(result, path)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        if (v < limit) if direction == "below" else (v > limit):
            out.append({"alert": name, "value": float(v), "threshold": float(limit), "direction": direction,
                        "reads": path})
    return out


def score_matrix(scores: Sequence[Mapping[str, float] | None], names: Sequence[str]) -> np.ndarray:
    """Logged `scores` dicts → (k, m) rows in fleet order (rows without every model dropped)."""
    rows = [[s[n] for n in names] for s in scores if isinstance(s, Mapping) and all(n in s for n in names)]
    return np.asarray(rows, dtype=float).reshape(-1, len(names))


def analyse(data: DecisionLogData, ref: Reference | None, cfg: MonitorConfig,
            bundle: RouterBundle | None = None) -> dict[str, Any]:
    """The monitor's numbers (module docstring) as a JSON-ready dict, plus `windows` (a DataFrame)."""
    dec = data.decisions
    names = list(bundle.model_names) if bundle is not None else sorted(dec["model"].dropna().unique())
    premium = str(bundle.premium) if bundle is not None else None
    tiers = sorted({int(t) for t in bundle.fleet.tiers}) if bundle is not None else \
        sorted({int(t) for t in pd.to_numeric(dec["tier"], errors="coerce").dropna()})
    routed = dec[dec["model"].notna()]
    latest = dec.iloc[max(0, len(dec) - cfg.window):]
    lat_routed = latest[latest["model"].notna()]
    cost = pd.to_numeric(dec["cost_usd"], errors="coerce").dropna()
    res: dict[str, Any] = {
        "n_decisions": int(len(dec)), "n_routed": int(len(routed)), "n_refused": int(dec["model"].isna().sum()),
        "files": [str(p) for p in data.files], "window": cfg.window, "n_latest": int(len(latest)),
        "t_first": float(dec["ts"].min()) if len(dec) else None, "t_last": float(dec["ts"].max()) if len(dec) else None,
        "bundle_ids": sorted(dec["bundle_id"].dropna().unique().tolist()),
        "premium": premium,
        "premium_share": float((routed["model"] == premium).mean()) if len(routed) and premium else None,
        "premium_share_latest": float((lat_routed["model"] == premium).mean()) if len(lat_routed) and premium else None,
        "usd_per_1k": float(1000 * cost.mean()) if len(cost) else None,
        "reasons": {"sticky": int(dec["sticky"].fillna(0).astype(int).sum()),
                    "fallback": int(dec["fallback"].fillna(0).astype(int).sum()),
                    "governance": {str(k): int(v) for k, v in dec["governance"].dropna().value_counts().items()}},
        "tier_mix": {"live_share": {str(int(t)): float((pd.to_numeric(routed["tier"]) == t).mean())
                                    for t in tiers} if len(routed) else {}},
    }
    sk = [s for s in latest["sketch"] if isinstance(s, np.ndarray)]
    if ref is not None and len(sk) >= 2:
        t = mmd_test(ref.sketch, np.stack(sk), cfg.permutations, cfg.max_samples, cfg.seed)
        res["drift"] = {**t, "test": "MMD (Gaussian kernel, median heuristic), permutation p-value",
                        "detected": bool(t["p_value"] is not None and t["p_value"] < cfg.drift_alpha),
                        "alpha": cfg.drift_alpha, "on": f"sketches of the latest {len(sk)} decisions vs the reference"}
    else:
        why = "no reference" if ref is None else "fewer than 2 sketched decisions (decision_log.store_sketch)"
        res["drift"] = {"detected": False, "p_value": None, "mmd2": None, "skipped": why}
    if ref is not None and ref.scores is not None:
        S = score_matrix(latest["scores"], names)
        if len(S) >= 2:
            t = mmd_test(ref.scores, S, cfg.permutations, cfg.max_samples, cfg.seed + 1)
            res["score_drift"] = {**t, "detected": bool(t["p_value"] < cfg.drift_alpha)}
    if ref is not None and ref.tiers is not None:
        ref_counts = pd.Series(ref.tiers).value_counts().to_dict()
        live_counts = pd.to_numeric(lat_routed["tier"]).value_counts().to_dict()
        t = mix_test({str(int(k)): v for k, v in ref_counts.items()}, {str(int(k)): v for k, v in live_counts.items()})
        res["tier_mix"].update({"latest_share": t.pop("live_share"), **t})  # the test: latest window vs reference
        res["premium_share_reference"] = float(np.mean([m == premium for m in ref.models]))
        if res["premium_share_latest"] is not None:
            res["premium_share_delta"] = abs(res["premium_share_latest"] - res["premium_share_reference"])
        res["usd_per_1k_reference"] = ref.usd_per_1k
        lat_cost = pd.to_numeric(latest["cost_usd"], errors="coerce").dropna()
        if len(lat_cost) and ref.usd_per_1k:
            res["usd_per_1k_latest"] = float(1000 * lat_cost.mean())
            res["usd_per_1k_ratio"] = res["usd_per_1k_latest"] / ref.usd_per_1k
    live_cats = dec["category"].dropna()
    if len(live_cats):
        res["category_mix"] = {**mix_test(ref.categories if ref is not None else {},
                                          {str(k): int(v) for k, v in live_cats.value_counts().items()}),
                               "n_with_category": int(len(live_cats))}
    res["shadow"] = shadow_summary(data.shadow, n_boot=cfg.n_boot, ci=cfg.ci, seed=cfg.seed) \
        if len(data.shadow) else {"n_graded": 0}

    def sketch_of(w: pd.DataFrame) -> np.ndarray | None:
        s = [x for x in w["sketch"] if isinstance(x, np.ndarray)]
        return np.stack(s) if len(s) >= 2 else None

    windows = mix_over_time(dec, cfg.window, tiers, premium, ref.sketch if ref is not None else None, sketch_of,
                            min(cfg.permutations, 200), cfg.seed)
    res["windows"] = windows
    res["alerts"] = evaluate_alerts(res, cfg.thresholds)
    return res
