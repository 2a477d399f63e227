"""kronaxis-export: any trained classifier (a kronaxis-train run dir) → a versioned production bundle.

    kronaxis-export run_dir=outputs/train/<run> hydra.run.dir=<out>            # → <out>/bundle/
    kronaxis-export run_dir=<run> policy=threshold calibration={target:premium_share,value:0.2}
    kronaxis-export run_dir=<run> policies=latency_slo policy=wtp_slo governance=local_cloud
    kronaxis-export run_dir=<kronaxis-compare out> [compare.dataset=llmrouter]   # the comparison's winner
    kronaxis-export run_dir=<run> cascade=verifier [cascade.pre_route=true]     # + a cascade (export/cascade.py)

Every classifier of configs/classifier/ exports (tier predictor, student, TF-IDF + LR, kNN with its index,
MLP, MF, rules, fallback, cluster prior, ensemble): the class writes its runtime files (`export_runtime`).
Writes <out>/bundle/ (router.json, the runtime's files, metrics.json, README.md; see
kronaxis_lab/export/bundle.py), loadable with `kronaxis_lab.export.bundle.load_bundle`. The dataset is the
one the classifier was trained on (its train_info.json), unless `dataset=` is given.

A kronaxis-compare output (a dir with comparison.json) as run_dir exports its winner: the trained router with
the highest **val** AIQ (chosen on val, as compare chose each policy; test is never used to pick), under the
policy compare picked for it (`compare.use_winner_policy`). The same classifier is also reachable directly,
`run_dir=<compare out>/<dataset>/train/<label>`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from kronaxis_lab.export.exporter import ExportSettings, check_exportable, classifier_class, export_bundle
from kronaxis_lab.export.schema import ExportError
from kronaxis_lab.pipelines.common import CONFIG_DIR, ConfigKindError, build, load_dataset, one_line_errors, output_dir
from kronaxis_lab.pipelines.replay import build_routers, check_split
from kronaxis_lab.tracking import tracked

log = logging.getLogger("kronaxis_lab.export")

BUNDLE_SUBDIR = "bundle"
COMPARISON_FILE = "comparison.json"  # what kronaxis-compare writes into its output dir


def compare_winner(compare_dir: Path, dataset: str | None = None) -> dict[str, Any]:
    """The winner of a kronaxis-compare output: {"classifier_dir", "policy", "label", "dataset", "val_aiq"}.

    Among the trained classifiers' rows of comparison.json (those with a `label`), the highest val AIQ; its
    classifier dir and policy come from the replay entry's `identity` (replay_val/ or replay/ metrics.json),
    else `<dataset>/train/<label>/classifier`."""
    doc = json.loads((compare_dir / COMPARISON_FILE).read_text())
    sections = {str(d["dataset"]): d for d in doc.get("datasets", [])}
    if dataset is None and len(sections) != 1:
        raise ValueError(f"{compare_dir} compares {sorted(sections)}: pick one with compare.dataset=<name>")
    name = str(dataset) if dataset is not None else next(iter(sections))
    if name not in sections:
        raise ValueError(f"{compare_dir} has no dataset {name!r} (it has {sorted(sections)})")
    win = sections[name].get("winner")
    if win and win.get("label"):  # the choice kronaxis-compare made and printed: the one source
        best = {"label": win["label"], "entry": win.get("entry"), "val_aiq": win.get("val_aiq")}
        if win.get("classifier_dir") and Path(win["classifier_dir"]).is_dir():
            return {"classifier_dir": Path(win["classifier_dir"]), "policy": win.get("policy"),
                    "label": win["label"], "dataset": name, "val_aiq": win.get("val_aiq")}
    else:  # no winner entry: the trained rows (their entry names a classifier, `Class[label]+policy`; a
        # reference router's entry is its own label) with the highest val AIQ
        rows = [r for r in sections[name].get("rows", []) if r.get("label") and r.get("entry") != r["label"]
                and r.get("kind", "classifier") == "classifier"]
        if not rows:
            raise ValueError(f"{compare_dir / COMPARISON_FILE}: no trained classifier in the {name} section")
        best = max(rows, key=lambda r: float("-inf") if r.get("val_aiq") is None else float(r["val_aiq"]))
    identity: dict[str, Any] = {}
    for sub in ("replay_val", "replay"):
        path = compare_dir / name / sub / "metrics.json"
        if path.is_file():
            identity = json.loads(path.read_text()).get("routers", {}).get(best.get("entry"), {}).get("identity", {})
            if identity:
                break
    clf_dir = Path(identity.get("classifier_dir") or compare_dir / name / "train" / best["label"] / "classifier")
    return {"classifier_dir": clf_dir, "policy": identity.get("policy"), "label": best["label"], "dataset": name,
            "val_aiq": best.get("val_aiq")}


def classifier_dir_of(run_dir: Path) -> Path:
    """`<run>/classifier` for a kronaxis-train run dir; the dir itself when it is a classifier dir."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir {run_dir} does not exist (pass a kronaxis-train output directory)")
    if (run_dir / COMPARISON_FILE).is_file():
        return compare_winner(run_dir)["classifier_dir"]
    if (run_dir / "classifier.json").is_file():
        return run_dir
    if (run_dir / "classifier" / "classifier.json").is_file():
        return run_dir / "classifier"
    raise FileNotFoundError(f"run_dir {run_dir} holds no classifier/classifier.json: not a kronaxis-train output")


def _train_info(clf_dir: Path) -> dict[str, Any]:
    path = clf_dir / "train_info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: export needs the dataset and split the classifier was trained "
                                "on (kronaxis-train writes it)")
    return json.loads(path.read_text())


def _dataset_cfg(cfg: DictConfig, info: dict[str, Any]) -> DictConfig:
    """`cfg` with `dataset` set to the training dataset (train_info.json) unless one was given."""
    cfg = cfg.copy()
    with open_dict(cfg):
        if not cfg.get("dataset"):
            node = dict(info["dataset_config"])
            node["fleet"] = info.get("fleet")
            cfg.dataset = OmegaConf.create(node)
    return cfg


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    run_dir = Path(str(cfg.run_dir)).expanduser()
    policy_name = str(cfg.policy)
    if (run_dir / COMPARISON_FILE).is_file():  # a kronaxis-compare output: its winner
        comp = cfg.get("compare") or {}
        win = compare_winner(run_dir, comp.get("dataset"))
        log.info("kronaxis-compare winner on %s: %s (val AIQ %s, policy %s) in %s", win["dataset"], win["label"],
                 win["val_aiq"], win["policy"], win["classifier_dir"])
        clf_dir = Path(win["classifier_dir"])
        if comp.get("use_winner_policy", True) and win["policy"]:
            policy_name = str(win["policy"])
    else:
        clf_dir = classifier_dir_of(run_dir)
    check_exportable(classifier_class(clf_dir), f"{clf_dir} (classifier.json)")  # before loading any data
    info = _train_info(clf_dir)
    dcfg = _dataset_cfg(cfg, info)
    if cfg.get("dataset"):
        check_split(clf_dir, dcfg, 0)  # a different split config could put training queries in the test split
    ds = load_dataset(dcfg)

    policies = cfg.get("policies") or {}
    if policy_name not in policies:
        raise ValueError(f"policy={policy_name} is not in the policies group {sorted(policies)} "
                         "(pick one, or select another group, e.g. policies=latency_slo policy=wtp_slo)")
    policy_node = OmegaConf.to_container(policies[policy_name], resolve=True)
    def plain(key: str):
        return OmegaConf.to_container(cfg[key], resolve=True) if cfg.get(key) else None

    calib, dop, gov = plain("calibration"), plain("default_operating_point"), plain("governance")
    cascade, metadata = plain("cascade"), plain("metadata")
    # the salt stays an ${oc.env:...} interpolation: resolved by the server at start-up, never stored in the bundle
    sticky = OmegaConf.to_container(cfg.stickiness, resolve=False) if cfg.get("stickiness") else None
    settings = ExportSettings.from_config(cfg, splits={"train": info.get("train_split", "train"),
                                                       "val": info.get("val_split", "val"),
                                                       "test": str(cfg.metrics.split)})
    metrics_path = clf_dir.parent / "train_metrics.json"
    train_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    routers = build_routers(cfg) if cfg.metrics.replay else {}
    counter = build(cfg.tokenizer, "token counter") if cfg.get("tokenizer") else None
    source = {"run_dir": str(run_dir.resolve()), "train_info": {k: v for k, v in info.items() if k != "fleet"}}
    log.info("exporting %s with policy %s → %s", clf_dir, policy_name, out / BUNDLE_SUBDIR)
    return export_bundle(clf_dir, out / BUNDLE_SUBDIR, ds, policy_name=policy_name, policy_config=policy_node,
                         calibration=calib, default_operating_point=dop, governance=gov, stickiness=sticky,
                         reference_routers=routers, settings=settings, train_metrics=train_metrics, source=source,
                         token_counter=counter, cascade=cascade,
                         metadata=metadata)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    with one_line_errors("kronaxis-export", ExportError, ConfigKindError):  # e.g. a classifier without export
        res = tracked("export", run, cfg)
    meta = res["meta"]
    par = meta["parity"]
    print(json.dumps({"bundle": res["bundle_dir"], "bundle_id": meta["bundle_id"],
                      "policy": f"{meta['policy']['name']}@{meta['policy']['param']}",
                      "runtime": meta["classifier"]["kind"].rpartition(".")[2],
                      "default_variant": meta["default_variant"], "fp32_max_abs_diff": par["fp32"]["max_abs_diff"],
                      "int8_decision_agreement": (par.get("int8") or {}).get("decision_agreement")}, indent=2))


if __name__ == "__main__":
    main()
