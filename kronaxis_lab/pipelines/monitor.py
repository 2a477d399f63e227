"""kronaxis-monitor: what the router's decision log says about the served bundle (drift, mixes, shadow quality).

    kronaxis-monitor decision_log=<log dir> bundle=<bundle dir> hydra.run.dir=<out>
    kronaxis-monitor decision_log=<dir> bundle=<dir> candidate=<retrained bundle dir> hydra.run.dir=<out>

Writes <out>/report.md, <out>/monitor.json (n_decisions, drift.{detected,p_value,...}, premium_share, shadow, alerts,
windows, ...), the PNG plots, <out>/reference_sketch.npz (the drift reference: `kronaxis-serve
decision_log.drift_reference=<out>/reference_sketch.npz` turns on the server's drift gauges) and, from graded
shadow rows with stored text, <out>/retrain/{fresh,combined} (`dataset=saved` directories). The loop:

    kronaxis-serve bundle=<b> decision_log.path=<log> decision_log.store_text=true shadow.enabled=true upstreams=...
    kronaxis-monitor decision_log=<log> bundle=<b> hydra.run.dir=<m>
    kronaxis-train dataset=saved dataset.path=<m>/retrain/combined classifier=... hydra.run.dir=<t>
    kronaxis-export run_dir=<t> hydra.run.dir=<e>
    kronaxis-monitor decision_log=<log> bundle=<b> candidate=<e>/bundle hydra.run.dir=<m2>   # report: promote?
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.data.tables import RoutingDataset, TableError
from kronaxis_lab.export.bundle import Bundle, BundleError, load_bundle
from kronaxis_lab.monitoring.decision_log import read_decision_log
from kronaxis_lab.monitoring.monitor import MonitorConfig, Reference, analyse, write_reference_sketch
from kronaxis_lab.monitoring.report import write_monitor_report
from kronaxis_lab.monitoring.retrain import combined_dataset, compare_bundles, fresh_dataset
from kronaxis_lab.pipelines.common import (
    CONFIG_DIR,
    RECORDED_OUTCOMES,
    ConfigKindError,
    build,
    make_store,
    one_line_errors,
    output_dir,
    require_kind,
)

log = logging.getLogger("kronaxis_lab.monitor")


def train_info(bundle: Bundle | None) -> dict[str, Any]:
    return dict(((bundle.meta.get("source") or {}).get("train_info") or {})) if bundle is not None else {}


def reference_dataset(cfg: DictConfig, bundle: Bundle | None) -> RoutingDataset | None:
    """`reference=<saved dir>`, else the dataset the bundle was trained on (router.json source.train_info)."""
    if cfg.get("reference"):
        return RoutingDataset.load(Path(str(cfg.reference)).expanduser())
    node = dict(train_info(bundle).get("dataset_config") or {})
    if not node:
        return None
    require_kind(node, RECORDED_OUTCOMES)
    if not node.get("fleet") and bundle is not None:
        node["fleet"] = bundle.fleet.to_dict()
    try:
        return build(node, "reference dataset").load(make_store(cfg))
    except (TableError, FileNotFoundError) as e:
        log.warning("the bundle's training dataset cannot be read (%s): drift is not tested; set reference=<dir>", e)
        return None


def reference_queries(ds: RoutingDataset, split: str, n: int, seed: int):
    q = ds.queries[ds.queries["split"] == split] if split else ds.queries
    return q.sample(n=min(n, len(q)), random_state=seed) if len(q) > n else q


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    data = read_decision_log(Path(str(cfg.decision_log)).expanduser())
    if cfg.get("since") is not None:
        keep = data.decisions["ts"] >= float(cfg.since)
        data.decisions = data.decisions[keep].reset_index(drop=True)
        data.shadow = data.shadow[data.shadow["ts"] >= float(cfg.since)].reset_index(drop=True)
    bundle = load_bundle(Path(str(cfg.bundle)).expanduser()) if cfg.get("bundle") else None
    ref_ds = reference_dataset(cfg, bundle)
    ref = None
    if ref_ds is not None:
        queries = reference_queries(ref_ds, str(cfg.reference_split), int(cfg.max_reference), int(cfg.drift.seed))
        ref = Reference.build(queries, bundle)
        write_reference_sketch(ref.sketch, out / "reference_sketch.npz")
        log.info("reference: %d %s queries of %s", ref.n, cfg.reference_split, ref_ds.name)
    mc = MonitorConfig(window=int(cfg.window), drift_alpha=float(cfg.drift.alpha),
                       permutations=int(cfg.drift.permutations), max_samples=int(cfg.drift.max_samples),
                       seed=int(cfg.drift.seed), n_boot=int(cfg.shadow.n_boot), ci=float(cfg.shadow.ci),
                       thresholds=OmegaConf.to_container(cfg.alerts, resolve=True) or {})
    result = analyse(data, ref, mc, bundle)
    if bundle is not None and cfg.retrain.write:
        split = (train_info(bundle).get("dataset_config") or {}).get("split")
        fresh = fresh_dataset(data, bundle.fleet, split=split)
        result["retrain"] = dict(fresh.info)
        if len(fresh.queries):
            result["retrain"]["fresh_dir"] = str(fresh.save(out / "retrain" / "fresh"))
            if ref_ds is not None:
                combined = combined_dataset(ref_ds, fresh)
                result["retrain"]["combined_dir"] = str(combined.save(out / "retrain" / "combined"))
        if cfg.get("candidate") and len(fresh.queries):
            cand = load_bundle(Path(str(cfg.candidate)).expanduser())
            c = cfg.compare
            result["compare"] = compare_bundles(fresh, {"current": bundle, "candidate": cand}, split=str(c.split),
                                                pass_score=float(c.pass_score), n_boot=int(c.n_boot),
                                                tolerance=float(c.tolerance), seed=int(cfg.drift.seed))
    paths = write_monitor_report(result, out)
    for a in result["alerts"]:
        log.warning("ALERT %s: %.4g (%s %.4g)", a["alert"], a["value"], a["direction"], a["threshold"])
    return {"result": result, "paths": {k: str(v) for k, v in paths.items()}}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="monitor")
def main(cfg: DictConfig) -> None:
    with one_line_errors("kronaxis-monitor", ConfigKindError, BundleError, FileNotFoundError, TableError):
        res = run(cfg)
    r = res["result"]
    print(json.dumps({"n_decisions": r["n_decisions"], "drift": {k: r["drift"].get(k) for k in ("detected", "p_value")},
                      "premium_share": r.get("premium_share"), "alerts": [a["alert"] for a in r["alerts"]]}, indent=2))
    print("\n".join(f"{k}: {v}" for k, v in res["paths"].items()))
    if cfg.get("fail_on_alert") and r["alerts"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
