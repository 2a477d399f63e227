"""Task prior from text (kronaxis_lab/classifiers/task_prior.py): the synthetic 3-task data of
tests/test_cluster_prior.py (distinct vocabularies, known per-task rates); labels at fit, text at predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.classifiers.base import ClassifierInputError, load_classifier
from kronaxis_lab.classifiers.calibration import log_loss
from kronaxis_lab.classifiers.cluster_prior import cluster_rates
from kronaxis_lab.classifiers.ensemble import EnsembleRouter
from kronaxis_lab.classifiers.task_prior import TaskPriorRouter, task_weights
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.export.runtimes import load_runtime
from kronaxis_lab.pipelines.train import run as train_run
from kronaxis_lab.routing.policies import WillingnessToPay
from kronaxis_lab.routing.replay import replay_matrices
from kronaxis_lab.routing.routers import ClassifierPredictor, PolicyRouter, PriorPredictor
from tests.conftest import compose
from tests.test_cluster_prior import MODELS, RATES, VOCAB, three_tasks
from tests.test_train_pipeline import save_learnable

QUIET = {"tfidf": {"min_df": 1}, "show_progress": False}


def mats(queries, Y, tasks) -> Matrices:
    n = len(queries)
    qdf = pd.DataFrame({"query_id": [f"q{i}" for i in range(n)], "text": queries, "task": tasks, "category": tasks})
    return Matrices(queries=qdf, model_names=MODELS, scores=Y, correct=Y.astype(bool),
                    costs=np.tile([1.0, 4.0, 20.0], (n, 1)), input_tokens=np.ones((n, 3)),
                    output_tokens=np.ones((n, 3)))


def test_task_weights_soft_and_hard():
    z = np.array([[0.0, np.log(3.0)], [2.0, 1.0]])
    np.testing.assert_allclose(task_weights(z, 1.0), [[0.25, 0.75], [np.e / (np.e + 1), 1 / (np.e + 1)]])
    np.testing.assert_array_equal(task_weights(z, 0.0), [[0.0, 1.0], [1.0, 0.0]])


def test_perfect_task_classifier_equals_the_labelled_prior_in_replay(tmp_path):
    """Separable vocabularies + hard assignment: p(t|q) is one-hot on the true task, so P̂ is exactly
    PriorPredictor's (same rates, same smoothing) and the replayed λ sweeps are identical."""
    q, Y, tasks = three_tasks(200, 0)
    qt, Yt, tt = three_tasks(60, 1)
    clf = TaskPriorRouter(temperature=0.0, smoothing=10.0, **QUIET).fit(q, Y, MODELS, tasks=tasks)
    A = clf.task_proba(qt)
    np.testing.assert_array_equal(np.asarray(clf.tasks_)[A.argmax(1)], tt)  # the classifier is perfect here
    fleet = Fleet.from_config({"models": {m: {"tier": i, "price_in": p, "price_out": p}
                                          for i, (m, p) in enumerate(zip(MODELS, [1, 4, 20]))}})
    routers = [PolicyRouter(PriorPredictor(by="task", smoothing=10.0), WillingnessToPay(), "prior"),
               PolicyRouter(ClassifierPredictor(str(clf.save_pretrained(tmp_path / "tp"))), WillingnessToPay(), "tp")]
    res = replay_matrices(mats(qt, Yt, tt), fleet, routers, train=mats(q, Y, tasks))
    np.testing.assert_allclose(res.results["tp"].predictions, res.results["prior"].predictions, atol=1e-12)
    assert res.routers["tp"]["aiq"] == pytest.approx(res.routers["prior"]["aiq"])


def test_soft_prediction_is_the_task_mixture_of_the_rates():
    q, Y, tasks = three_tasks(150, 0)
    qv, Yv, _ = three_tasks(40, 2)
    clf = TaskPriorRouter(C_grid=[0.1, 10.0], **QUIET).fit(q, Y, MODELS, qv, Yv, tasks=tasks)
    losses = {row["C"]: row["val_log_loss"] for row in clf.selection_}
    assert set(losses) == {0.1, 10.0} and clf.C_ == min(losses, key=losses.get)  # C chosen on val
    np.testing.assert_allclose(clf.predict_proba(qv), clf.task_proba(qv) @ clf.rates_)
    hard = TaskPriorRouter(C=clf.C_, temperature=0.0, **QUIET).fit(q, Y, MODELS, tasks=tasks)
    assert log_loss(clf.predict_proba(qv), Yv) <= log_loss(hard.predict_proba(qv), Yv) + 1e-9  # fitted T ≥ hard
    truth = np.array([RATES[t] for t in clf.tasks_])
    assert np.abs(clf.rates_ - truth).max() < 0.1  # the per-task rates are recovered


def test_nan_targets_are_masked_in_the_rates():
    q, Y, tasks = three_tasks(30, 0)
    Y[0, 1] = Y[5, 2] = np.nan
    clf = TaskPriorRouter(**QUIET).fit(q, Y, MODELS, tasks=tasks)
    idx = np.searchsorted(clf.tasks_, tasks)
    r, g = cluster_rates(idx, Y, 3, 10.0)
    np.testing.assert_allclose(clf.rates_, r)
    np.testing.assert_allclose(clf.global_rate_, g)
    assert np.isfinite(clf.predict_proba(q)).all()


def test_train_pipeline_and_ensemble_hand_it_the_train_labels(tmp_path):
    """kronaxis-train passes the dataset's task column (train rows only); the ensemble forwards it per fold."""
    save_learnable(tmp_path / "ds")
    over = ["dataset=saved", f"dataset.path={tmp_path / 'ds'}", "classifier=task_prior",
            "classifier.show_progress=false"]
    tr = train_run(compose("train", over, tmp_path / "train"))
    meta = json.loads((Path(tr["classifier_dir"]) / "task_prior.json").read_text())
    assert meta["label_source"] == "tasks"

    q, Y, tasks = three_tasks(60, 0)
    node = {"_target_": "kronaxis_lab.classifiers.task_prior.TaskPriorRouter", **QUIET}
    ens = EnsembleRouter(members={"tp": node}, n_folds=2, show_progress=False).fit(q, Y, MODELS, tasks=tasks)
    assert ens.members_["tp"].label_source_ == "tasks" and ens.members_["tp"].tasks_ == sorted(VOCAB)
    assert TaskPriorRouter(**QUIET).task_labels_column() == "task"
    assert TaskPriorRouter(task_column="category", **QUIET).task_labels_column() == "category"


def test_missing_labels_fail_naming_the_column():
    q, Y, tasks = three_tasks(20, 0)
    with pytest.raises(ClassifierInputError, match="no task column"):
        TaskPriorRouter(**QUIET).fit(q, Y, MODELS, tasks=[None] * len(q))
    with pytest.raises(ClassifierInputError, match="1 of 60 train queries have no 'task' label"):
        TaskPriorRouter(**QUIET).fit(q, Y, MODELS, tasks=[None] + list(tasks[1:]))
    with pytest.raises(ClassifierInputError, match="59 labels for 60 queries"):
        TaskPriorRouter(**QUIET).fit(q, Y, MODELS, tasks=list(tasks[1:]))


def test_no_labels_falls_back_to_clusters(caplog):
    q, Y, _ = three_tasks(100, 0)
    qt, _, tt = three_tasks(30, 1)
    clf = TaskPriorRouter(fallback_clusters=3, **QUIET).fit(q, Y, MODELS)
    assert clf.label_source_ == "clusters" and "KMeans clusters" in caplog.text
    truth = np.array([RATES[t] for t in tt])
    assert np.abs(clf.predict_proba(qt) - truth).mean() < 0.05  # the clusters are the tasks here


def test_save_load_and_runtime_reproduce_the_classifier(tmp_path):
    q, Y, tasks = three_tasks(60, 0)
    qv, Yv, _ = three_tasks(20, 2)
    clf = TaskPriorRouter(**QUIET).fit(q, Y, MODELS, qv, Yv, tasks=tasks)
    P = clf.predict_proba(qv)
    again = load_classifier(clf.save_pretrained(tmp_path / "saved"))
    assert again.label_source_ == "tasks" and again.tasks_ == clf.tasks_
    np.testing.assert_allclose(again.predict_proba(qv), P, atol=1e-12)
    node = clf.export_runtime(tmp_path / "bundle")
    runtime = load_runtime(tmp_path / "bundle", node)
    assert runtime.label_order == MODELS
    np.testing.assert_allclose(runtime.predict_proba(qv, "fp32"), P, atol=1e-9)
    assert runtime.predict_proba([], "fp32").shape == (0, 3)
