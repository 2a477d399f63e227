"""From shadow-graded live rows back to training data, and the measured promote decision.

    fresh = fresh_dataset(read_decision_log(log_dir), bundle.fleet, split=train_split_cfg)   # RoutingDataset
    fresh.save(out / "fresh")                          # kronaxis-train/-replay dataset=saved dataset.path=<out>/fresh
    combined_dataset(old, fresh).save(out / "combined")   # old + new outcomes: kronaxis-train on both
    compare_bundles(fresh, {"old": old_bundle, "new": new_bundle})   # on the fresh test rows: promote or not

**Rows.** Every graded shadow row (`shadow.py`) becomes one query (its redacted text from the decision log, so
the log must have run with `decision_log.store_text=true`; rows without text are counted and skipped) with two
outcome rows: the routed model's and the counterfactual model's, each with its score, correct = score ≥ pass,
tokens and $ as served. A text asked several times keeps its first graded row. Splits: the seeded hash split
of the old dataset (`split` = its `dataset.split` config), so a live text identical to a training question
lands in the same split, and `dataset=saved` drops any train/val row whose question is in test.
With more than two models each fresh query has outcomes for two of them; the train/replay matrices keep only
queries with every model (`RoutingDataset.matrices(complete=True)`), so a larger fleet needs every model shadowed.

**Promote.** `compare_bundles` routes the fresh test rows through each bundle exactly as the server does
(`predict_proba`, then `decide(P, texts)`) and reads the recorded outcomes: accuracy, $ per 1,000 queries,
premium share, escalations missed (chosen model fails, premium passes), premium wasted (premium chosen, the
cheapest passes), each with a percentile bootstrap CI, plus the paired new − old differences.
`promote` is true when the candidate's accuracy is not worse (CI of the difference above −`tolerance`) and it
is better on accuracy (CI above 0) or cheaper at equal accuracy.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.splits import DEFAULT_SPLIT, hash_splits, question_keys
from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.monitoring.decision_log import DecisionLogData
from kronaxis_lab.serving.protocols import RouterBundle

LIVE_TASK = "live"  # task of a live query without metadata


def shadow_rows_with_text(data: DecisionLogData) -> tuple[pd.DataFrame, dict[str, int]]:
    """Graded shadow rows joined with their decision's text and category; (rows, counts of what was dropped)."""
    sh = data.shadow[data.shadow["status"] == "graded"]
    dec = data.decisions[["id", "text", "category"]].drop_duplicates("id", keep="last")
    rows = sh.merge(dec, left_on="decision_id", right_on="id", how="left")
    no_text = rows["text"].isna() | (rows["text"].astype(str).str.strip() == "")
    rows = rows[~no_text]
    dup = rows["text"].duplicated(keep="first")
    return rows[~dup].reset_index(drop=True), {"graded": int(len(sh)), "without_text": int(no_text.sum()),
                                               "duplicate_text": int(dup.sum())}


def fresh_dataset(data: DecisionLogData, fleet: Fleet, split: Mapping[str, Any] | None = None,
                  name: str = "live") -> RoutingDataset:
    """Graded shadow rows → a `RoutingDataset` (module docstring); `info` counts what was kept and dropped."""
    rows, dropped = shadow_rows_with_text(data)
    unknown = sorted((set(rows["routed_model"]) | set(rows["other_model"])) - set(fleet.names))
    if unknown:
        raise ValueError(f"shadow rows name models {unknown} that are not in the fleet {fleet.names}")
    s = {**DEFAULT_SPLIT, **dict(split or {})}
    qid = "live-" + rows["decision_id"].astype(str)
    task = rows["category"].where(rows["category"].notna(), LIVE_TASK)
    queries = pd.DataFrame({
        "query_id": qid, "text": rows["text"].astype(str), "messages": None, "task": task, "category": task,
        "gold": None, "split": hash_splits(question_keys(rows["text"]), dict(s["fractions"]), int(s["seed"])).values,
        "source": "live:" + rows["bundle_id"].fillna("").astype(str)})
    outs = []
    for side in ("routed", "other"):
        score = rows[f"{side}_score"].astype(float)
        outs.append(pd.DataFrame({
            "query_id": qid, "model": rows[f"{side}_model"].astype(str), "response": None, "score": score,
            "correct": score >= rows["pass_score"].astype(float),
            "input_tokens": pd.to_numeric(rows[f"{side}_input_tokens"], errors="coerce").fillna(0).astype(int),
            "output_tokens": pd.to_numeric(rows[f"{side}_output_tokens"], errors="coerce").fillna(0).astype(int),
            "cost_usd": pd.to_numeric(rows[f"{side}_cost_usd"], errors="coerce").fillna(0.0),
            "latency_s": pd.to_numeric(rows.get(f"{side}_latency_s"), errors="coerce")
            if f"{side}_latency_s" in rows else np.nan,
            "error": None}))
    outcomes = pd.concat(outs, ignore_index=True)
    info = {"fresh_queries": int(len(queries)), "dropped": dropped, "split": s,
            "splits": {k: int(v) for k, v in queries["split"].value_counts().items()}}
    return RoutingDataset(queries=queries, outcomes=outcomes, fleet=fleet, name=name, info=info)


def combined_dataset(old: RoutingDataset, fresh: RoutingDataset, name: str = "combined") -> RoutingDataset:
    """Old + fresh outcome rows over the old fleet (same model names required); splits kept."""
    if list(old.fleet.names) != list(fresh.fleet.names):
        raise ValueError(f"fleets differ: old {old.fleet.names}, fresh {fresh.fleet.names}")
    clash = set(old.queries["query_id"]) & set(fresh.queries["query_id"])
    if clash:
        raise ValueError(f"query ids in both datasets, e.g. {sorted(clash)[:3]}")
    info = {"old": {"name": old.name, "n_queries": int(len(old.queries))}, "fresh": fresh.info}
    return RoutingDataset(queries=pd.concat([old.queries, fresh.queries], ignore_index=True),
                          outcomes=pd.concat([old.outcomes, fresh.outcomes], ignore_index=True),
                          fleet=old.fleet, name=name, info=info)


# --------------------------------------------------------------------------------------------------
# old vs new bundle on the fresh rows
# --------------------------------------------------------------------------------------------------
def _stat(values: np.ndarray, boot_idx: np.ndarray, ci: float, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Mean of values (over `mask` rows) and its percentile bootstrap CI."""
    m = np.ones(len(values), bool) if mask is None else mask
    den = m[boot_idx].sum(axis=1)
    num = (values * m)[boot_idx].sum(axis=1)
    boot = np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)
    boot = boot[np.isfinite(boot)]
    value = float(values[m].mean()) if m.any() else None
    lo, hi = (np.percentile(boot, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]) if boot.size else (np.nan, np.nan))
    return {"value": value, "ci": [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]}


def compare_bundles(dataset: RoutingDataset, bundles: Mapping[str, RouterBundle], split: str = "test",
                    pass_score: float = 0.5, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                    tolerance: float = 0.0, baseline: str | None = None) -> dict[str, Any]:
    """Each bundle on `split` of `dataset` (module docstring); `baseline` (default: the first bundle) is the
    reference of the paired differences and of `promote` (for every other bundle)."""
    mats = dataset.matrices(split)
    n = mats.n
    if n == 0:
        raise ValueError(f"{dataset.name}: no complete rows in split '{split}' to compare bundles on")
    texts = mats.queries["text"].astype(str).tolist()
    rows = np.arange(n)
    names = list(dataset.fleet.names)
    premium, cheapest = names.index(dataset.fleet.premium), names.index(dataset.fleet.cheapest)
    boot_idx = np.random.default_rng(seed).integers(0, n, size=(max(n_boot, 1), n))
    per: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, Any] = {"dataset": dataset.name, "split": split, "n_queries": n, "pass_score": pass_score,
                           "bundles": {}}
    for label, b in bundles.items():
        if list(b.model_names) != names:
            raise ValueError(f"bundle {label} routes over {list(b.model_names)}, the dataset's fleet is {names}")
        choice = np.asarray(b.decide(b.predict_proba(texts), texts), dtype=int)
        s, c = mats.scores[rows, choice], mats.costs[rows, choice]
        chose_p = choice == premium
        missed = ~chose_p & (s < pass_score) & (mats.scores[:, premium] >= pass_score)
        wasted = chose_p & (mats.scores[:, cheapest] >= pass_score)
        per[label] = {"score": s, "cost": c}
        out["bundles"][label] = {
            "bundle_id": b.bundle_id, "accuracy": _stat(s, boot_idx, ci), "usd_per_1k": _stat(1000 * c, boot_idx, ci),
            "premium_share": _stat(chose_p.astype(float), boot_idx, ci),
            "escalations_missed_rate": _stat(missed.astype(float), boot_idx, ci, ~chose_p),
            "premium_wasted_rate": _stat(wasted.astype(float), boot_idx, ci, chose_p)}
    base = baseline or next(iter(bundles))
    out["baseline"] = base
    out["differences"] = {}
    for label in bundles:
        if label == base:
            continue
        d_acc = _stat(per[label]["score"] - per[base]["score"], boot_idx, ci)
        d_cost = _stat(1000 * (per[label]["cost"] - per[base]["cost"]), boot_idx, ci)
        lo = d_acc["ci"][0]
        better = lo is not None and lo > 0
        cheaper = (d_cost["value"] or 0.0) < 0 and lo is not None and lo >= -tolerance
        out["differences"][label] = {"accuracy": d_acc, "usd_per_1k": d_cost,
                                     "promote": bool(lo is not None and lo >= -tolerance and (better or cheaper))}
    return out
