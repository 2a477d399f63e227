"""Write the monitor's outputs: monitor.json, report.md and PNG plots (mix, cost and drift over time, category mix,
shadow quality and misrouting with their CIs)."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (float, np.floating)):
        return f"{x:.1%}" if pct else f"{x:.4g}"
    return str(x)


def _ci(stat: Any, pct: bool = False) -> str:
    if not isinstance(stat, dict):
        return "—"
    lo, hi = stat.get("ci") or (None, None)
    ci = f" [{_fmt(lo, pct)}, {_fmt(hi, pct)}]" if lo is not None else ""
    return f"{_fmt(stat.get('value'), pct)}{ci}"


def _time(ts: Any) -> str:
    return "—" if ts is None else _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, pd.DataFrame):
        return _clean(o.to_dict("records"))
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    return o


def write_monitor_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """monitor.json (every number; `windows` as records), report.md and the plots; {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"monitor": out / "monitor.json", "report": out / "report.md"}
    w = result.get("windows")
    if isinstance(w, pd.DataFrame) and len(w):
        paths["mix_over_time"] = out / "mix_over_time.png"
        paths["cost_over_time"] = out / "cost_over_time.png"
        _plot_mix(w, result, paths["mix_over_time"])
        _plot_cost(w, result, paths["cost_over_time"])
        if "drift_p_value" in w:
            paths["drift_over_time"] = out / "drift_over_time.png"
            _plot_drift(w, result, paths["drift_over_time"])
    if result.get("category_mix"):
        paths["category_mix"] = out / "category_mix.png"
        _plot_categories(result["category_mix"], paths["category_mix"])
    if (result.get("shadow") or {}).get("n_graded"):
        paths["shadow"] = out / "shadow.png"
        _plot_shadow(result["shadow"], paths["shadow"])
    payload = {**result, "paths": {k: str(v) for k, v in paths.items()}}
    paths["monitor"].write_text(json.dumps(_clean(payload), indent=2, allow_nan=False))
    paths["report"].write_text(markdown(result, paths))
    return paths


def markdown(r: dict[str, Any], paths: dict[str, Path]) -> str:
    d = r.get("drift") or {}
    bundles = ", ".join(r.get("bundle_ids") or [])
    lines = [f"# Router monitor — {r['n_decisions']} decisions", "",
             f"{_time(r.get('t_first'))} → {_time(r.get('t_last'))} UTC; bundle(s) {bundles}; {r['n_routed']} "
             f"routed, {r['n_refused']} refused; windows of {r['window']} decisions.", ""]
    alerts = r.get("alerts") or []
    lines += ["## Alerts", ""]
    lines += [f"- **{a['alert']}**: {_fmt(a['value'])} ({a['direction']} {_fmt(a['threshold'])}; `{a['reads']}`)"
              for a in alerts] or ["None: every configured threshold holds."]
    lines += ["", "## Drift against the training reference", "",
              "| test | statistic | p-value | detected | samples (reference / live) |", "|---|---|---|---|---|"]
    if d.get("skipped"):
        lines.append(f"| embedding (MMD) | — | — | — | skipped: {d['skipped']} |")
    else:
        lines.append(f"| embedding sketch, MMD² permutation | {_fmt(d.get('mmd2'))} | {_fmt(d.get('p_value'))} | "
                     f"{'**yes**' if d.get('detected') else 'no'} | {d.get('n_reference')} / {d.get('n_live')} |")
    for key, name in (("score_drift", "classifier P̂, MMD² permutation"), ("tier_mix", "tier mix, χ²"),
                      ("category_mix", "category mix, χ²")):
        t = r.get(key) or {}
        if t.get("p_value") is not None:
            stat = t.get("mmd2", t.get("statistic"))
            lines.append(f"| {name} | {_fmt(stat)} | {_fmt(t['p_value'])} | "
                         f"{'**yes**' if t['p_value'] < d.get('alpha', 0.01) else 'no'} | — |")
    lines += ["", "| | live (whole log) | live (latest window) | reference (bundle on its training queries) |",
              "|---|---|---|---|",
              f"| premium share | {_fmt(r.get('premium_share'), True)} | {_fmt(r.get('premium_share_latest'), True)} | "
              f"{_fmt(r.get('premium_share_reference'), True)} |",
              f"| $ per 1k requests | {_fmt(r.get('usd_per_1k'))} | {_fmt(r.get('usd_per_1k_latest'))} | "
              f"{_fmt(r.get('usd_per_1k_reference'))} (expected) |"]
    tm = r.get("tier_mix") or {}
    for t, v in (tm.get("live_share") or {}).items():
        lines.append(f"| tier {t} share | {_fmt(v, True)} | {_fmt((tm.get('latest_share') or {}).get(t), True)} | "
                     f"{_fmt((tm.get('reference_share') or {}).get(t), True)} |")
    cm = r.get("category_mix")
    if cm:
        lines += ["", f"Category mix ({cm['n_with_category']} decisions with `metadata.category`):", "",
                  "| category | live | reference |", "|---|---|---|"]
        for c, v in sorted((cm.get("live_share") or {}).items(), key=lambda kv: -(kv[1] or 0)):
            lines.append(f"| {c} | {_fmt(v, True)} | {_fmt((cm.get('reference_share') or {}).get(c), True)} |")
    s = r.get("shadow") or {}
    lines += ["", "## Shadow evaluation", ""]
    if s.get("n_graded"):
        lines += [f"{s['n_graded']} graded rows ({s['n_routed_below_reference']} routed below the reference, "
                  f"{s['n_routed_to_reference_tier']} to its tier); {int(100 * s['ci_level'])} % bootstrap CIs "
                  f"({s['n_boot']} resamples); shadow spend ${_fmt(s.get('shadow_cost_usd'))}.", "",
                  "| | value [CI] |", "|---|---|"]
        for k, pct in (("quality_routed", False), ("quality_reference", False), ("quality_vs_reference", True),
                       ("accuracy_routed", True), ("escalations_missed_rate", True), ("premium_wasted_rate", True),
                       ("misrouted_share", True), ("cpao_live", False), ("cpao_reference", False)):
            lines.append(f"| {k.replace('_', ' ')} | {_ci(s.get(k), pct)} |")
    else:
        lines.append("No graded shadow rows (kronaxis-serve shadow.enabled=true samples answered requests).")
    w = r.get("windows")
    if isinstance(w, pd.DataFrame) and len(w):
        lines += ["", "## Over time", "", "| window | from (UTC) | n | premium share | $ per 1k | drift p |",
                  "|---|---|---|---|---|---|"]
        for _, row in w.iterrows():
            lines.append(f"| {int(row['window'])} | {_time(row['t_start'])} | {int(row['n'])} | "
                         f"{_fmt(row['premium_share'], True)} | {_fmt(row['usd_per_1k'])} | "
                         f"{_fmt(row.get('drift_p_value'))} |")
    if r.get("retrain"):
        rt = r["retrain"]
        lines += ["", "## Retraining rows", "", f"{rt.get('fresh_queries', 0)} fresh queries from graded shadow rows "
                  f"(dropped: {rt.get('dropped')}); splits {rt.get('splits')}."]
        for k in ("fresh_dir", "combined_dir"):
            if rt.get(k):
                lines.append(f"- `{k}`: `{rt[k]}` (`kronaxis-train dataset=saved dataset.path={rt[k]}`)")
    cmp_ = r.get("compare")
    if cmp_:
        lines += ["", f"## Current vs candidate bundle on the fresh `{cmp_['split']}` rows ({cmp_['n_queries']})", "",
                  "| bundle | accuracy | $ per 1k | premium share | escalations missed | premium wasted |",
                  "|---|---|---|---|---|---|"]
        for name, b in cmp_["bundles"].items():
            lines.append(f"| {name} (`{b['bundle_id']}`) | {_ci(b['accuracy'])} | {_ci(b['usd_per_1k'])} | "
                         f"{_ci(b['premium_share'], True)} | {_ci(b['escalations_missed_rate'], True)} | "
                         f"{_ci(b['premium_wasted_rate'], True)} |")
        for name, dif in cmp_["differences"].items():
            lines.append(f"\n{name} − {cmp_['baseline']}: accuracy {_ci(dif['accuracy'])}, $ per 1k "
                         f"{_ci(dif['usd_per_1k'])} → **{'promote' if dif['promote'] else 'keep the current bundle'}**")
    plots = [k for k in paths if k not in ("monitor", "report")]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({paths[k].name})" for k in plots]
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_mix(w: pd.DataFrame, r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    tiers = [c for c in w.columns if c.startswith("tier_")]
    ax.stackplot(w["window"], *[w[c].fillna(0) for c in tiers], labels=[c.replace("_", " ") for c in tiers], alpha=0.6)
    ax.plot(w["window"], w["premium_share"], "k-o", ms=3, label="premium share")
    if r.get("premium_share_reference") is not None:
        ax.axhline(r["premium_share_reference"], color="k", ls="--", lw=1, label="premium share, reference")
    ax.set(xlabel=f"window ({r['window']} decisions each)", ylabel="share", ylim=(0, 1), title="Predicted-tier mix")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cost(w: pd.DataFrame, r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(w["window"], w["usd_per_1k"], "-o", ms=3, label="live (reported usage)")
    if r.get("usd_per_1k_reference") is not None:
        ax.axhline(r["usd_per_1k_reference"], color="k", ls="--", lw=1, label="reference (expected)")
    ax.set(xlabel="window", ylabel="$ per 1,000 requests", title="Cost per 1k requests")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_drift(w: pd.DataFrame, r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.semilogy(w["window"], w["drift_p_value"].clip(lower=1e-4), "-o", ms=3, label="MMD p-value per window")
    ax.axhline((r.get("drift") or {}).get("alpha", 0.01), color="r", ls="--", lw=1, label="alert threshold")
    ax.set(xlabel="window", ylabel="p-value", title="Embedding drift vs the training reference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_categories(cm: dict[str, Any], path: Path) -> None:
    plt = _plt()
    live, ref = cm.get("live_share") or {}, cm.get("reference_share") or {}
    cats = sorted(set(live) | set(ref), key=lambda c: -(live.get(c) or 0))[:20]
    x = np.arange(len(cats))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(cats) + 3), 3.5))
    ax.bar(x - 0.2, [live.get(c) or 0 for c in cats], 0.4, label="live")
    ax.bar(x + 0.2, [ref.get(c) or 0 for c in cats], 0.4, label="reference")
    ax.set_xticks(x, cats, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="share", title="Category mix")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_shadow(s: dict[str, Any], path: Path) -> None:
    plt = _plt()
    keys = [k for k in ("quality_vs_reference", "accuracy_routed", "escalations_missed_rate", "premium_wasted_rate")
            if (s.get(k) or {}).get("value") is not None]
    vals = [s[k]["value"] for k in keys]
    err = [[v - (s[k]["ci"][0] if s[k]["ci"][0] is not None else v) for k, v in zip(keys, vals)],
           [(s[k]["ci"][1] if s[k]["ci"][1] is not None else v) - v for k, v in zip(keys, vals)]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(keys)), vals, yerr=err, capsize=4)
    ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=8)
    ax.set(ylabel="share", title=f"Shadow evaluation ({s['n_graded']} graded, {int(100 * s['ci_level'])} % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
