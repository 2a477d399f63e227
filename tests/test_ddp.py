"""Distributed training: kronaxis-train under torchrun with 2 processes on CPU (gloo), a tiny tier predictor (1
encoder layer, a few steps). Both ranks train (DDP); rank 0 alone saves; the saved classifier loads and predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kronaxis_lab.classifiers.base import load_classifier
from tests.conftest import ROOT
from tests.test_train_pipeline import save_learnable

N_TRAIN, PER_DEVICE = 64, 8


@pytest.mark.slow
def test_tier_predictor_trains_with_ddp_on_two_cpu_processes(tmp_path):
    save_learnable(tmp_path / "ds", 160)
    out = tmp_path / "run"  # set explicitly: each rank composes its own ${now:...} otherwise
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kronaxis_lab.pipelines.train", "dataset=saved", f"dataset.path={tmp_path / 'ds'}",
           "classifier=tier_predictor", "classifier.num_layers=1", "classifier.max_length=32",
           "classifier.show_progress=false", "classifier.training_args.num_train_epochs=1",
           f"classifier.training_args.per_device_train_batch_size={PER_DEVICE}", f"limit_train={N_TRAIN}",
           f"hydra.run.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "distributed (DDP) training: rank 1 of 2" in log  # torchrun launched both ranks
    # one optimiser step per global batch of 2 × 8: 64 queries → 4 steps (8 in a single process)
    steps = [e["step"] for e in json.loads((out / "classifier" / "train_log.json").read_text())]
    assert max(steps) == N_TRAIN // (2 * PER_DEVICE)
    assert (out / "train.log").read_text().count("classifier saved to") == 1  # only rank 0 saved
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["n_train"] == N_TRAIN and metrics["val"]["mean_auc"] is not None

    clf = load_classifier(out / "classifier")
    P = clf.predict_proba(["prove the theorem about primes number 3", "say hello to cats number 4"])
    assert P.shape == (2, 2) and np.all((P >= 0) & (P <= 1))
