"""kronaxis-train: learn a router's predictor from the outcome table's train split.

    kronaxis-train dataset=llmrouter classifier=tier_predictor
    kronaxis-train dataset=routerbench dataset.path=<dir> classifier=knn hydra.run.dir=<out>

Writes <out>/classifier/ (load with kronaxis_lab.classifiers.base.load_classifier) with train_info.json
(dataset, split config, fleet — replay uses it to refuse a leaky split), and <out>/train_metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.classifiers.base import train_fingerprint
from kronaxis_lab.classifiers.calibration import val_calibration_metrics, with_calibration
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.pipelines.common import CONFIG_DIR, ConfigKindError, build, load_dataset, one_line_errors, output_dir
from kronaxis_lab.routing.labels import make_targets
from kronaxis_lab.routing.routers import ReplayContext
from kronaxis_lab.tracking import is_main_process, tracked, world_size

log = logging.getLogger("kronaxis_lab.train")


def eval_predictions(P: np.ndarray, Y: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-model AUC (targets ≥ 0.5 as positives), Brier score and calibration gap on held-out queries."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {"per_model": {}}
    aucs = []
    for j, name in enumerate(names):
        y = Y[:, j] >= 0.5
        auc = float(roc_auc_score(y, P[:, j])) if 0 < y.sum() < len(y) else None
        if auc is not None:
            aucs.append(auc)
        out["per_model"][name] = {"auc": auc, "brier": float(np.mean((P[:, j] - Y[:, j]) ** 2)),
                                  "mean_pred": float(P[:, j].mean()), "mean_target": float(Y[:, j].mean())}
    out["mean_auc"] = float(np.mean(aucs)) if aucs else None
    out["brier"] = float(np.mean((P - Y) ** 2)) if P.size else None
    return out


def val_costs(cfg: DictConfig, ds: Any, train: Matrices, val: Matrices) -> tuple[np.ndarray, np.ndarray]:
    """(expected, recorded) $ of every val query, each (n_val, m): the expected $ exactly as kronaxis-replay computes
    them (ReplayContext: the one cost model, fitted on the whole `train` split, prompt tokens from `cfg.tokenizer`)."""
    counter = build(cfg.tokenizer, "token counter") if cfg.get("tokenizer") else None
    ctx = ReplayContext(test=val, fleet=ds.fleet, train=train, val=val, token_counter=counter)
    return ctx.expected_cost_for(val), np.asarray(val.costs, float)


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    ds = load_dataset(cfg)
    full_train = train = ds.matrices(cfg.train_split)  # the whole split prices val, as replay prices it
    val = ds.matrices(cfg.val_split)
    if cfg.get("limit_train"):
        keep = int(cfg.limit_train)
        train = replace(train, queries=train.queries.iloc[:keep], scores=train.scores[:keep], costs=train.costs[:keep])
    if len(train.queries) == 0:
        raise ValueError(f"{ds.name}: the '{cfg.train_split}' split is empty: nothing to train on")
    tk = OmegaConf.to_container(cfg.targets, resolve=True)
    Y = make_targets(tk["kind"], train.scores, train.costs, **(tk.get("params") or {}))
    Yv = make_targets(tk["kind"], val.scores, val.costs, **(tk.get("params") or {})) if val.n else None
    clf = with_calibration(build(cfg.classifier, "classifier"), cfg.get("calibrate"))  # unchanged when null
    costs = train.costs.mean(axis=0).tolist()  # relative cost per model: every fit takes it (ordinal tier order)
    texts = train.queries["text"].astype(str).tolist()
    vtexts = val.queries["text"].astype(str).tolist() if val.n else None
    log.info("training %s on %d queries × %d models (val %d)", type(clf).__name__, len(texts), Y.shape[1], val.n)
    if world_size() > 1:  # torchrun: the Trainer wraps the network in DDP
        log.info("distributed (DDP) training: rank %s of %s", os.environ.get("RANK", "0"), world_size())
    t0 = time.perf_counter()
    col = clf.task_labels_column()  # e.g. the task prior learns p(task | text) from the train labels
    extra = {"tasks": train.queries[col].tolist() if col in train.queries else None} if col else {}
    if clf.wants_val_costs() and val.n:  # e.g. a blend picks its weights by val AIQ, priced as replay prices it
        extra["val_costs"] = val_costs(cfg, ds, full_train, val)
    clf.fit(texts, Y, model_names=ds.fleet.names, val_queries=vtexts, val_targets=Yv, model_costs=costs, **extra)
    train_s = time.perf_counter() - t0
    if not is_main_process():  # DDP (torchrun): every rank holds the same weights; rank 0 saves and evaluates
        return {"classifier_dir": str(out / "classifier"), "metrics": {"train_seconds": train_s}, "classifier": clf}
    clf_dir = clf.save_pretrained(out / "classifier")
    info = {"dataset": ds.name, "dataset_config": OmegaConf.to_container(cfg.dataset, resolve=True),
            "train_split": cfg.train_split, "val_split": cfg.val_split, "targets": tk, "fleet": ds.fleet.to_dict(),
            "n_train": len(texts), "n_val": int(val.n),
            "train_fingerprint": train_fingerprint(texts, Y, ds.fleet.names)}  # checked by PretrainedClassifier
    info["dataset_config"].pop("fleet", None)
    (clf_dir / "train_info.json").write_text(json.dumps(info, indent=2, default=str))
    metrics: dict[str, Any] = {"classifier": type(clf).__name__, "train_seconds": train_s, "n_train": len(texts),
                               "n_val": int(val.n), "targets": tk}
    if val.n:
        t0 = time.perf_counter()
        Pv = np.asarray(clf.predict_proba(vtexts), float)
        metrics["val_predict_seconds"] = time.perf_counter() - t0
        metrics["val"] = eval_predictions(Pv, Yv, ds.fleet.names)
        metrics["calibration"] = val_calibration_metrics(clf, Pv, Yv, ds.fleet.names)  # ECE / Brier per model
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("classifier saved to %s (train %.1f s, val mean AUC %s)", clf_dir, train_s,
             metrics.get("val", {}).get("mean_auc"))
    return {"classifier_dir": str(clf_dir), "metrics": metrics, "classifier": clf}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    with one_line_errors("kronaxis-train", ConfigKindError):  # e.g. dataset=gsm8k (a question set): one line
        res = tracked("train", run, cfg)
    m = res["metrics"]
    print(json.dumps({k: v for k, v in m.items() if k not in ("val", "calibration")}
                     | {"val_mean_auc": m.get("val", {}).get("mean_auc")}, indent=2))
    print(f"classifier: {res['classifier_dir']}")


if __name__ == "__main__":
    main()
