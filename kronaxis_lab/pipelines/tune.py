"""kronaxis-tune: one hyperparameter trial = kronaxis-train + a kronaxis-replay of the **val** split; the console
script returns the val AIQ, the objective Hydra's sweepers (Optuna) maximise. The test split is never read.

    kronaxis-tune -m experiment=sweep_tier_predictor                    # Optuna TPE, 20 trials (configs/experiment/)
    kronaxis-tune -m experiment=sweep_ensemble hydra.sweeper.n_trials=50 dataset_name=routellm_mmlu_gsm8k
    kronaxis-tune -m experiment=sweep_ensemble hydra/launcher=parallel  # trials in parallel (joblib)
    kronaxis-tune classifier_spec=tfidf_logreg +train.classifier.C=0.5  # one trial

The trial trains `classifier_spec` (a kronaxis-compare spec, `[label:]<config>[@<train override>]...`) on the
train split of `dataset_name` with `overrides` + every leaf of `train` as kronaxis-train overrides
(`train: {classifier: {C: 0.5}}` → `classifier.C=0.5`: the keys a sweeper varies), replays val under each policy
and takes the policy with the highest val AIQ (as kronaxis-compare does). Writes `<out>/train/` (the
classifier), `<out>/replay_val/` and `<out>/tune.json`; the sweeper writes `<sweep dir>/optimization_results.yaml`
(best params, best val AIQ). Report the chosen configuration once on test afterwards:
`kronaxis-replay classifier_dir=<best trial>/train/classifier`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.pipelines.common import CONFIG_DIR, ConfigKindError, one_line_errors, output_dir
from kronaxis_lab.pipelines.compare import compose, entries_of, parse_spec, pick_policy_on_val
from kronaxis_lab.pipelines.replay import run as replay_run
from kronaxis_lab.pipelines.train import run as train_run
from kronaxis_lab.tracking import tracked

log = logging.getLogger("kronaxis_lab.tune")


def override_value(v: Any) -> str:
    """A value in Hydra's override grammar (numbers and words as written, lists/dicts/odd strings as JSON)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str) and v.replace("_", "").replace("-", "").replace(".", "").isalnum():
        return v
    return json.dumps(v)


def searched_overrides(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`{classifier: {C: 0.5}}` → `["classifier.C=0.5"]`: every leaf of `train` as a kronaxis-train override."""
    out: list[str] = []
    for k, v in node.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += searched_overrides(v, key) if isinstance(v, Mapping) and v else [f"{key}={override_value(v)}"]
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    out = output_dir(cfg)
    _, clf_over = parse_spec(cfg.classifier_spec)
    overrides = [str(o) for o in (cfg.get("overrides") or [])]
    searched = searched_overrides(OmegaConf.to_container(cfg.get("train") or {}, resolve=True))
    tcfg = compose("train", [f"dataset={cfg.dataset_name}", *clf_over, *overrides, *searched], out / "train")
    log.info("trial: %s %s", cfg.classifier_spec, " ".join(searched))
    tr = train_run(tcfg)
    val = replay_run(compose("replay", [f"dataset={cfg.dataset_name}", f"classifier_dir={tr['classifier_dir']}",
                                        f"split={tcfg.val_split}", f"train_split={tcfg.train_split}",
                                        f"val_split={tcfg.val_split}", "routers=minimal", *overrides],
                             out / "replay_val"))
    best = pick_policy_on_val(val["metrics"], tr["classifier_dir"])
    chosen = val["metrics"][best]
    value = chosen.get(str(cfg.objective))
    objective = float(value) if value is not None and math.isfinite(float(value)) else math.nan
    policies = {e["identity"]["policy"]: e.get(str(cfg.objective)) for e in entries_of(val["metrics"],
                                                                                       tr["classifier_dir"]).values()}
    res = {"objective": objective, "objective_name": f"val_{cfg.objective}", "policy": chosen["identity"]["policy"],
           "entry": best, "val_by_policy": policies, "overrides": searched, "classifier_dir": tr["classifier_dir"],
           "val": {k: v for k, v in chosen.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
           "train_metrics": {k: v for k, v in tr["metrics"].items() if k not in ("targets",)}}
    (out / "tune.json").write_text(json.dumps(res, indent=2, default=str))
    log.info("val %s %.4f under %s", cfg.objective, objective, res["policy"])
    return res


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="tune")
def main(cfg: DictConfig) -> float:
    with one_line_errors("kronaxis-tune", ConfigKindError):
        res = tracked("tune", run, cfg)
    print(json.dumps({k: res[k] for k in ("objective_name", "objective", "policy", "overrides", "classifier_dir")}))
    return res["objective"]  # what a Hydra sweeper optimises


if __name__ == "__main__":
    main()
