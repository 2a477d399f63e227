"""Hyperparameter search: kronaxis-tune (train + a val replay → the val AIQ a Hydra sweeper maximises; test never
read), the sweep experiments' search spaces, and a real 2-trial Optuna sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from kronaxis_lab.pipelines.compare import entries_of
from kronaxis_lab.pipelines.tune import run as tune_run
from kronaxis_lab.pipelines.tune import searched_overrides
from tests.conftest import CONFIGS, ROOT, compose
from tests.test_train_pipeline import save_learnable

SWEEPS = sorted(p.stem for p in (CONFIGS / "experiment").glob("sweep_*.yaml"))


def with_hydra(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides, return_hydra_config=True)


def test_searched_values_become_train_overrides():
    node = {"classifier": {"C": 0.5, "members": {"knn": {"k": 12}}, "head": "ordinal", "flag": True, "x": None}}
    assert searched_overrides(node) == ["classifier.C=0.5", "classifier.members.knn.k=12", "classifier.head=ordinal",
                                        "classifier.flag=true", "classifier.x=null"]
    assert searched_overrides({}) == []


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_searches_real_kronaxis_train_keys(sweep):
    """Every searched key exists in the tune config, and the overrides it becomes are valid kronaxis-train
    overrides of the classifier the sweep trains (a typo in the search space fails here, not after an hour)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = with_hydra("tune", [f"experiment={sweep}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "optuna"
    params = dict(sweeper.params)
    assert params and all(k.startswith("train.") for k in params)
    for key in params:
        assert OmegaConf.select(cfg, key) is not None, f"{sweep}: searched key {key} has no starting value"
    train = [f"classifier={cfg.classifier_spec.split('@')[0]}", *searched_overrides(
        OmegaConf.to_container(cfg.train, resolve=True))]
    tcfg = compose("train", train, None)  # raises on a key the classifier config does not have
    for key in params:
        assert OmegaConf.select(tcfg, key.removeprefix("train.")) == OmegaConf.select(cfg, key)


def test_a_trial_returns_the_val_aiq_of_its_val_chosen_policy_and_never_replays_test(tmp_path):
    save_learnable(tmp_path / "ds", 300)
    cfg = compose("tune", ["dataset_name=saved", f"overrides=['dataset.path={tmp_path / 'ds'}']",
                           "classifier_spec=tfidf_logreg", "+train.classifier.C=0.5"], tmp_path / "trial")
    res = tune_run(cfg)
    val = json.loads((tmp_path / "trial/replay_val/metrics.json").read_text())
    assert val["split"] == "val" and not (tmp_path / "trial/replay").exists()  # test is never replayed
    mine = entries_of(val["routers"], res["classifier_dir"])
    assert res["objective"] == pytest.approx(max(e["aiq"] for e in mine.values()))
    assert res["objective"] == pytest.approx(mine[res["entry"]]["aiq"]) and res["objective_name"] == "val_aiq"
    assert res["overrides"] == ["classifier.C=0.5"]
    assert json.loads((Path(res["classifier_dir"]) / "classifier.json").read_text())["config"]["C"] == 0.5
    assert json.loads((tmp_path / "trial/tune.json").read_text())["objective"] == pytest.approx(res["objective"])


@pytest.mark.slow
def test_an_optuna_sweep_of_two_trials_maximises_the_val_aiq(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    save_learnable(tmp_path / "ds", 300)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "kronaxis_lab.pipelines.tune", "-m", "experiment=sweep_ensemble",
           "hydra.sweeper.n_trials=2", "dataset_name=saved", f"overrides=['dataset.path={tmp_path / 'ds'}']",
           "+train.classifier.show_progress=false", f"hydra.sweep.dir={sweep}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(i) / "tune.json").read_text()) for i in range(2)]
    assert result["best_value"] == pytest.approx(max(t["objective"] for t in trials))
    best = max(trials, key=lambda t: t["objective"])
    assert sorted(f"{k.removeprefix('train.')}={v}" for k, v in result["best_params"].items()) == sorted(
        o for o in best["overrides"] if o.split("=")[0] != "classifier.show_progress")
    assert trials[0]["overrides"] != trials[1]["overrides"]  # the sampler really varied the ensemble
    for i in range(2):
        assert (sweep / str(i) / "replay_val" / "metrics.json").is_file() and not (sweep / str(i) / "replay").exists()
