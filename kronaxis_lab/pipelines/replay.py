"""kronaxis-replay: replay a split of recorded outcomes through routers → metrics.json, report.md, plots.

    kronaxis-replay dataset=llmrouter
    kronaxis-replay dataset=routerbench dataset.path=<dir or file> hydra.run.dir=<out>
    kronaxis-replay -m dataset=llmrouter,routellm_mmlu_gsm8k          # multirun
    kronaxis-replay dataset=llmrouter bundle=<kronaxis-export out>/bundle hydra.run.dir=<out>

With `bundle=<dir>` the exported router is replayed as the server runs it (`kronaxis_lab.export.replay`: its
`predict_proba` + `decide` at its operating parameter, the same cost model, the same policy parameter), as
`bundle:<policy>@<param>` (and `bundle+<policy>`, its sweep); every router of the replay is then priced by the
bundle's cost model. Its entries equal the bundle's metrics.json replay.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from kronaxis_lab.export.bundle import BundleError, load_bundle
from kronaxis_lab.export.replay import bundle_router_names, bundle_routers
from kronaxis_lab.export.schema import encode_param
from kronaxis_lab.pipelines.common import CONFIG_DIR, ConfigKindError, build, load_dataset, one_line_errors, output_dir
from kronaxis_lab.routing.replay import replay
from kronaxis_lab.routing.report import summary_table, write_report
from kronaxis_lab.routing.routers import ClassifierPredictor, MetadataBlendPredictor, PolicyRouter
from kronaxis_lab.tracking import tracked

log = logging.getLogger("kronaxis_lab.replay")


def build_routers(cfg: DictConfig) -> dict[str, Any]:
    routers = {name: build(node, f"router '{name}'") for name, node in (cfg.get("routers") or {}).items() if node}
    return routers


def _classifier_dirs(cfg: DictConfig) -> list[str]:
    d = cfg.get("classifier_dir")
    if not d:
        return []
    return [str(x) for x in d] if isinstance(d, (list, ListConfig)) else [str(d)]


def check_split(clf_dir: Path, cfg: DictConfig, n_models: int) -> str:
    """The classifier's train split must come from the same dataset + split config (else test may leak)."""
    info_path = clf_dir / "train_info.json"
    if not info_path.is_file():
        return "unknown"
    return check_train_info(json.loads(info_path.read_text()), cfg, str(clf_dir))


def check_train_info(info: dict[str, Any], cfg: DictConfig, where: str) -> str:
    """`check_split` on a train_info record (a classifier dir's, or the one a bundle's router.json carries)."""
    ours = OmegaConf.to_container(cfg.dataset, resolve=True)
    same = (info.get("dataset_config", {}).get("split") == ours.get("split")
            and info.get("dataset_config", {}).get("_target_") == ours.get("_target_"))
    if not same and not cfg.get("allow_split_mismatch"):
        raise ValueError(
            f"{where} was trained on {info.get('dataset')} with split {info.get('dataset_config', {}).get('split')}, "
            f"but this replay uses {ours.get('_target_')} with split {ours.get('split')}: its training queries may be "
            "in this test split. Retrain, or set allow_split_mismatch=true to replay anyway.")
    return "checked" if same else "mismatch-allowed"


def classifier_routers(cfg: DictConfig, n_models: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in _classifier_dirs(cfg):
        clf_dir = Path(d)
        split_check = check_split(clf_dir, cfg, n_models)
        predictor = ClassifierPredictor(str(clf_dir))
        base = clf_dir.parent.name if clf_dir.name == "classifier" else clf_dir.name
        label = f"{type(predictor.clf).__name__}[{base}]"
        for pname, pnode in (cfg.get("policies") or {}).items():
            if pname == "strong_win" and n_models != 2:
                log.info("policy strong_win skipped: it needs a 2-model fleet (this one has %d)", n_models)
                continue
            policy = build(pnode, f"policy '{pname}'")
            calib = OmegaConf.to_container(cfg.calibration, resolve=True) if cfg.get("calibration") else None
            identity = {"label": base, "classifier": type(predictor.clf).__name__, "classifier_dir": str(clf_dir),
                        "policy": pname}  # what compare and reports read; the display name is only for people
            r = PolicyRouter(predictor, policy, name=f"{label}+{pname}", calibration=calib, info={"identity": identity})
            out[r.name] = r
            meta = cfg.get("metadata")
            if meta:  # "text + metadata": the same classifier blended with the per-tag rates of a request tag
                by = str(meta.get("by", "task"))
                blend = MetadataBlendPredictor(predictor, by=by, smoothing=float(meta.get("smoothing", 10.0)))
                r = PolicyRouter(blend, build(pnode, f"policy '{pname}'"), name=f"{label}+meta:{by}+{pname}",
                                 calibration=calib,
                                 info={"identity": {**identity, "metadata": by}, "family": "metadata"})
                out[r.name] = r
        log.info("classifier %s (split check: %s)", clf_dir, split_check)
    return out


def load_bundle_for(cfg: DictConfig, fleet_names: list[str]):
    """The `bundle=<dir>` bundle, checked against this replay: same fleet (names and order), same split
    config as it was trained on (router.json source.train_info)."""
    bundle = load_bundle(Path(str(cfg.bundle)).expanduser())
    if bundle.model_names != list(fleet_names):
        raise BundleError(f"bundle {bundle.dir} routes over {bundle.model_names}, this dataset's fleet is "
                          f"{list(fleet_names)}: replay it on the dataset it was exported for")
    info = (bundle.meta.get("source") or {}).get("train_info")
    log.info("bundle %s (split check: %s)", bundle.dir, check_train_info(info, cfg, str(bundle.dir)) if info
             else "unknown")
    return bundle


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    ds = load_dataset(cfg)
    if cfg.get("save_dataset"):
        ds.save(out / "dataset")
    bundle = load_bundle_for(cfg, ds.fleet.names) if cfg.get("bundle") else None
    routers = build_routers(cfg)
    routers.update(classifier_routers(cfg, len(ds.fleet.names)))
    if bundle is not None:
        routers.update(bundle_routers(bundle))
    if not routers:
        raise ValueError("no routers configured (routers=reference, or add entries under 'routers')")
    if bundle is not None:  # the server's numbers: the bundle's cost model and prompt-token counter
        counter, cost_model = bundle.cost_counter, bundle.cost_model
    else:
        counter = build(cfg.tokenizer, "token counter") if cfg.get("tokenizer") else None
        cost_model = None
    res = replay(ds, routers, split=cfg.split, seed=cfg.seed, train_split=cfg.train_split,
                 val_split=cfg.val_split, token_counter=counter, cost_model=cost_model)
    extra = {"dataset_info": ds.info, "fleet": ds.fleet.to_dict(),
             "config": OmegaConf.to_container(cfg.dataset, resolve=True)}
    if bundle is not None:
        sweep, fixed = bundle_router_names(bundle)
        extra["bundle"] = {"dir": str(bundle.dir), "bundle_id": bundle.bundle_id, "policy": bundle.policy_name,
                           "param": encode_param(bundle.param), "variant": bundle.default_variant,
                           "bundle_router": fixed, "bundle_sweep": sweep}
    extra["config"].pop("fleet", None)
    cm = res.ctx.cost_model
    if cm is not None:  # what priced every choice, and how well it predicts output lengths
        extra["cost_model"] = {"tokenizer": cm.tokenizer,
                               "mean_output_tokens": cm.expected_output_tokens(ds.fleet.names),
                               "output_model_error": cm.output_model.error if cm.output_model else None}
    paths = write_report(res, out, category_routers=cfg.report.category_routers, extra=extra,
                         max_plot_categories=cfg.report.max_plot_categories)
    table = summary_table(res)
    log.info("\n%s", table.to_string(index=False))
    return {"metrics": res.routers, "paths": {k: str(v) for k, v in paths.items()}, "table": table, "result": res}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="replay")
def main(cfg: DictConfig) -> None:
    # bad input, e.g. dataset=gsm8k (a question set) or a broken bundle: one line
    with one_line_errors("kronaxis-replay", ConfigKindError, BundleError):
        out = tracked("replay", run, cfg)
    print(out["table"].to_string(index=False))
    print("\n".join(f"{k}: {v}" for k, v in out["paths"].items()))


if __name__ == "__main__":
    main()
