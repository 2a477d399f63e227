"""Write a replay's report: metrics.json, report.md (tables) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab import metrics as M
from kronaxis_lab.routing.replay import ReplayResult

REFERENCE_PREFIXES = ("oracle", "random", "always:", "cheapest")


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    if isinstance(x, (float, np.floating)):
        return f"{x:.1%}" if pct else (f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}")
    return str(x)


def focus_routers(res: ReplayResult, names: Sequence[str] | None = None) -> list[str]:
    """Routers that get a per-category table: the configured ones, else the best non-oracle by AIQ."""
    if names:
        missing = [n for n in names if n not in res.routers]
        if missing:
            raise ValueError(f"report.category_routers: unknown router(s) {missing}; have {list(res.routers)}")
        return list(names)
    cands = {n: r for n, r in res.routers.items() if n != "oracle" and r.get("aiq") is not None}
    learned = {n: r for n, r in cands.items() if not n.startswith(REFERENCE_PREFIXES)}
    pool = learned or cands
    return [max(pool, key=lambda n: pool[n]["aiq"])] if pool else []


def summary_table(res: ReplayResult) -> pd.DataFrame:
    cols = {"accuracy": True, "cost_usd": False, "cpao": False, "savings_vs_premium": True, "premium_share": True,
            "aiq": False, "max_accuracy": True, "savings_at_95pct_premium": True, "apgr": False, "cpt50": True,
            "cpt80": True, "oracle_gap": True}
    rows = []
    for name, r in sorted(res.routers.items(), key=lambda kv: -(kv[1].get("aiq") or 0)):
        rows.append({"router": name, **{c: _fmt(r.get(c), pct) for c, pct in cols.items() if c in r}})
    return pd.DataFrame(rows)


def write_report(res: ReplayResult, out_dir: str | Path, category_routers: Sequence[str] | None = None,
                 extra: dict[str, Any] | None = None, max_plot_categories: int = 16) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    focus = focus_routers(res, category_routers)
    payload = {
        "dataset": res.dataset, "split": res.split, "n_queries": res.n_queries, "models": res.model_names,
        "premium": res.premium, "cheapest": res.cheapest, **(extra or {}),
        "routers": res.routers,
        "per_category": {n: res.category_table(n).to_dict("records") for n in focus},
    }
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md",
             "cost_quality": out_dir / "cost_quality.png", "per_category": out_dir / "per_category.png"}
    paths["metrics"].write_text(json.dumps(payload, indent=2, default=_json_default))
    _plot_curves(res, paths["cost_quality"])
    if focus:
        _plot_categories(res, focus[0], paths["per_category"], max_plot_categories)
    else:
        paths.pop("per_category")
    paths["report"].write_text(_markdown(res, focus, paths, extra))
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _markdown(res: ReplayResult, focus: list[str], paths: dict[str, Path], extra: dict | None) -> str:
    lines = [f"# Replay report — {res.dataset} ({res.split} split, {res.n_queries:,} queries)", "",
             f"Models (cheapest tier first): {', '.join(res.model_names)}. Premium reference: **{res.premium}**.", "",
             "Sweep routers are summarised at their operating point: the cheapest point reaching 95 % of the "
             "premium model's accuracy, else their most accurate point. AIQ: RouterBench's area under the "
             "non-decreasing convex hull over the shared cost range. CPAO = total $ / number of correct outcomes.",
             "", "## Routers", "", summary_table(res).to_markdown(index=False), "",
             f"![cost–quality]({paths['cost_quality'].name})", ""]
    for name in focus:
        ct = res.category_table(name)
        fmt = ct.copy()
        for c in ("share_of_queries", "cost_vs_premium", "accuracy", "premium_accuracy"):
            fmt[c] = fmt[c].map(lambda v: _fmt(float(v), pct=True))
        lines += [f"## Per category — {name}", "", fmt.to_markdown(index=False), ""]
    if "per_category" in paths:
        lines += [f"![per category]({paths['per_category'].name})", ""]
    if extra:
        lines += ["## Run", "", "```json", json.dumps(extra, indent=2, default=_json_default), "```", ""]
    return "\n".join(lines)


def _plot_curves(res: ReplayResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    colors = plt.get_cmap("tab20").colors
    for i, (name, r) in enumerate(sorted(res.routers.items())):
        pts = np.asarray(r["curve"], float)
        color = colors[i % len(colors)]
        if r["kind"] == "sweep":
            hc, hq = M.ndch(pts[:, 0], pts[:, 1])
            ax.plot(hc, hq, "-", lw=1.8, color=color, label=f"{name} (AIQ {_fmt(r.get('aiq'))})")
            ax.plot(pts[:, 0], pts[:, 1], ".", ms=3, alpha=0.4, color=color)
        else:
            marker = "*" if name == "oracle" else "o"
            ax.plot(pts[:, 0], pts[:, 1], marker, ms=11 if marker == "*" else 7, color=color, label=name)
    ax.set_xlabel(f"total cost on the {res.split} split (USD)")
    ax.set_ylabel("accuracy (mean score)")
    ax.set_title(f"{res.dataset}: cost–quality (lines = non-decreasing convex hull)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if len(res.routers) > 10 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_categories(res: ReplayResult, router: str, path: Path, max_categories: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = "category" if res.queries["category"].nunique() <= max_categories else "task"
    ct = res.category_table(router, by=by)
    x = np.arange(len(ct))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(ct) + 3), 7), sharex=True)
    a1.bar(x - 0.2, ct["accuracy"], 0.4, label=router)
    a1.bar(x + 0.2, ct["premium_accuracy"], 0.4, label=f"always {res.premium}")
    a1.set_ylabel("accuracy")
    a1.legend(fontsize=8)
    a2.bar(x, ct["cost_vs_premium"], 0.6, color="tab:green")
    a2.axhline(1.0, color="grey", lw=0.8, ls="--")
    a2.set_ylabel("cost / premium cost")
    a2.set_xticks(x, ct[by], rotation=45, ha="right", fontsize=8)
    fig.suptitle(f"{res.dataset}: per {by} — {router}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
