"""Experiment tracking (kronaxis_lab/tracking.py): off by default in every pipeline; MLflow into a local file store
under the run dir (train: params, metrics, classifier artifact; compare: a parent run + one child per classifier);
TensorBoard with the HF Trainer reporting through report_to."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from kronaxis_lab.pipelines.compare import run as compare_run
from kronaxis_lab.pipelines.replay import run as replay_run
from kronaxis_lab.pipelines.train import run as train_run
from kronaxis_lab.tracking import RESULT_LOGGERS, Tracker, flat_metrics, flat_params, tracked
from tests.conftest import compose
from tests.test_train_pipeline import save_learnable

PIPELINES = ("train", "replay", "compare", "label", "export", "tune")


@pytest.mark.parametrize("root", PIPELINES)
def test_tracking_is_off_by_default_in_every_pipeline(root, tmp_path):
    cfg = compose(root, [], tmp_path)
    assert OmegaConf.to_container(cfg.logger) == {"_target_": "kronaxis_lab.tracking.Tracker"}
    assert Tracker.from_cfg(cfg.logger).enabled is False and root in RESULT_LOGGERS
    assert tracked(root, lambda c: {"ran": c is cfg}, cfg) == {"ran": True}  # no logger: just run(cfg)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "tensorboard").exists()


def test_flat_metrics_keep_finite_numbers_only():
    m = {"a": 1, "b": {"c": 2.5, "d": None, "e": "text", "f": float("nan"), "g": True, "h": np.float32(0.5)},
         "i": [1, 2], "j": float("inf")}
    assert flat_metrics(m) == {"a": 1.0, "b/c": 2.5, "b/g": 1.0, "b/h": 0.5}
    assert flat_metrics({"x": 1}, "ds") == {"ds/x": 1.0}
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": {}, "e": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "{}",
                                                                               "e": "None"}


class Recorder(Tracker):
    """Keeps what a result logger sends, per run (children under their names)."""

    enabled, log_models = True, True

    def __init__(self, name="root"):
        self.name, self.metrics, self.artifacts, self.tags, self.children = name, {}, [], {}, {}

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_artifact(self, path, name=None):
        self.artifacts.append((str(path), name))

    def set_tags(self, tags):
        self.tags.update(tags)

    def child_run(self, name):
        from contextlib import nullcontext
        self.children[name] = Recorder(name)
        return nullcontext(self.children[name])


def test_every_result_logger_reads_its_pipeline_result(tmp_path):
    """The result shapes of export, label and tune (their pipelines are covered end to end elsewhere)."""
    import pandas as pd

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    tr = Recorder()
    RESULT_LOGGERS["export"](tr, cfg, {"bundle_dir": str(tmp_path), "meta": {
        "bundle_id": "b1", "default_variant": "int8", "policy": {"name": "wtp"},
        "parity": {"fp32": {"max_abs_diff": 1e-6}, "int8": {"decision_agreement": 0.995}}},
        "metrics": {"train": {"x": 1}, "parity": {}, "routers": {"bundle": {"aiq": 0.61}}}})
    assert tr.metrics == {"parity/fp32/max_abs_diff": 1e-6, "parity/int8/decision_agreement": 0.995,
                          "bundle/routers/bundle/aiq": 0.61}
    assert tr.tags["bundle_id"] == "b1" and (str(tmp_path), "bundle") in tr.artifacts

    tr = Recorder()
    summary = pd.DataFrame([{"model": "small", "accuracy": 0.5, "total_usd": 0.01, "errors": 0, "tier": 0}])
    RESULT_LOGGERS["label"](tr, cfg, {"summary": summary, "stats": {"cache_hits": 3, "calls": {"small": 7}},
                                      "paths": {"dir": str(tmp_path), "summary": str(tmp_path / "summary.md")}})
    assert tr.metrics["small/accuracy"] == 0.5 and tr.metrics["label/calls/small"] == 7
    assert tr.metrics["label/cache_hits"] == 3

    tr = Recorder()
    RESULT_LOGGERS["tune"](tr, cfg, {"objective": 0.7, "policy": "wtp", "val": {"aiq": 0.7},
                                     "train_metrics": {"train_seconds": 2.0}, "classifier_dir": str(tmp_path)})
    assert tr.metrics == {"objective": 0.7, "val/aiq": 0.7, "train/train_seconds": 2.0}
    assert tr.tags == {"policy": "wtp"} and (str(tmp_path), "classifier") in tr.artifacts

    tr = Recorder()  # compare: a child per classifier, metrics per dataset
    rows = [{"router": "tfidf (wtp)", "label": "tfidf", "kind": "classifier", "aiq": 0.6, "val_aiq": 0.62,
             "entry": "T+wtp"}, {"router": "random", "label": "random", "kind": "reference", "aiq": 0.4}]
    RESULT_LOGGERS["compare"](tr, cfg, {"results": [{"dataset": "d", "rows": rows, "report": "", "plot": "",
                                                     "winner": {"label": "tfidf", "policy": "wtp", "val_aiq": 0.62,
                                                                "test_aiq": 0.6}}]})
    assert tr.metrics == {"d/winner/val_aiq": 0.62, "d/winner/test_aiq": 0.6, "d/random/aiq": 0.4}
    assert set(tr.children) == {"tfidf"} and tr.children["tfidf"].metrics == {"d/aiq": 0.6, "d/val_aiq": 0.62}
    assert tr.children["tfidf"].artifacts == [(str(tmp_path / "d/train/tfidf/classifier"), "d/classifier")]


@pytest.mark.slow
def test_mlflow_logs_train_and_compare_to_a_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # null → a file store under the run dir
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    save_learnable(tmp_path / "ds", 300)
    data = ["dataset=saved", f"dataset.path={tmp_path / 'ds'}"]

    # kronaxis-train: the resolved config as params, train_metrics.json as metrics, the classifier as an artifact
    cfg = compose("train", [*data, "classifier=tfidf_logreg", "logger=mlflow"], tmp_path / "train")
    res = tracked("train", train_run, cfg)
    client = MlflowClient((tmp_path / "train" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("kronaxis_lab/train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["kronaxis.pipeline"] == "train"
    assert run.data.params["classifier._target_"] == "kronaxis_lab.classifiers.tfidf.TfidfLogRegRouter"
    assert run.data.params["dataset.path"] == str(tmp_path / "ds")
    saved = json.loads((tmp_path / "train" / "train_metrics.json").read_text())
    assert run.data.metrics["val/mean_auc"] == pytest.approx(saved["val"]["mean_auc"]) == res["metrics"]["val"]["mean_auc"]
    assert run.data.metrics["val/per_model/weak/auc"] > 0.9
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "train_metrics.json",
                                                                      "classifier"}
    art = client.download_artifacts(run.info.run_id, "classifier", str(tmp_path / "dl"))
    assert json.loads((tmp_path / "dl" / "classifier" / "classifier.json").read_text()) and art

    # kronaxis-compare: one parent run (winners, comparison) and one child run per classifier
    cfg = compose("compare", ["datasets=[saved]", f"overrides=['dataset.path={tmp_path / 'ds'}']",
                              "classifiers=[tfidf:tfidf_logreg,rules]", "bootstrap.n=0", "logger=mlflow"],
                  tmp_path / "cmp")
    res = tracked("compare", compare_run, cfg)
    client = MlflowClient((tmp_path / "cmp" / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("kronaxis_lab/compare").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and set(children) == {"tfidf", "rules"}
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    (r,) = res["results"]
    assert parent.data.metrics["saved/winner/val_aiq"] == pytest.approx(r["winner"]["val_aiq"])
    assert parent.data.tags["saved/winner"].startswith(r["winner"]["label"] + " (")
    assert parent.data.metrics["saved/random/aiq"] == pytest.approx(next(x["aiq"] for x in r["rows"]
                                                                         if x["label"] == "random"))
    for row in (x for x in r["rows"] if x["kind"] == "classifier"):
        child = children[row["label"]]
        assert child.data.metrics["saved/aiq"] == pytest.approx(row["aiq"])
        assert child.data.metrics["saved/val_aiq"] == pytest.approx(row["val_aiq"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.md", "comparison.json", "saved"}
    assert [a.path for a in client.list_artifacts(children["tfidf"].info.run_id, "saved")] == ["saved/classifier"]

    # a pipeline that raises: the run is marked FAILED, the error propagates
    cfg = compose("replay", [*data, "logger=mlflow"], tmp_path / "bad")

    def boom(c):
        raise RuntimeError("pipeline failed")

    with pytest.raises(RuntimeError, match="pipeline failed"):
        tracked("replay", boom, cfg)
    client = MlflowClient((tmp_path / "bad" / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("kronaxis_lab/replay").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_tensorboard_gets_replay_metrics_and_the_hf_trainer_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save_learnable(tmp_path / "ds", 120)
    data = ["dataset=saved", f"dataset.path={tmp_path / 'ds'}"]
    res = tracked("replay", replay_run, compose("replay", [*data, "routers=minimal", "logger=tensorboard"],
                                                tmp_path / "replay"))
    ea = EventAccumulator(str(tmp_path / "replay" / "tensorboard")).Reload()
    assert ea.Scalars("random/aiq")[0].value == pytest.approx(res["metrics"]["random"]["aiq"], rel=1e-6)
    assert any(t.startswith("config") for t in ea.Tags()["tensors"])  # the resolved config, as text

    # a transformer classifier: logger=tensorboard also sets the HF Trainer's report_to
    tiny = ["classifier=tier_predictor", "classifier.num_layers=1", "classifier.max_length=32",
            "classifier.show_progress=false", "classifier.training_args.num_train_epochs=1",
            "classifier.training_args.logging_steps=1", "limit_train=32"]
    cfg = compose("train", [*data, *tiny, "logger=tensorboard"], tmp_path / "tp")
    tracked("train", train_run, cfg)
    assert list(cfg.classifier.training_args.report_to) == ["tensorboard"]
    trainer = EventAccumulator(str(tmp_path / "tp" / "tensorboard" / "trainer")).Reload()
    assert "train/loss" in trainer.Tags()["scalars"]
    ours = EventAccumulator(str(tmp_path / "tp" / "tensorboard")).Reload()
    assert "val/mean_auc" in ours.Tags()["scalars"] and "trainer/loss" in ours.Tags()["scalars"]
