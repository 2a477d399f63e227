"""Cluster launchers (configs/hydra/launcher/): slurm / local (submitit) and parallel (joblib) compose onto the
plugins' schemas, and a 2-job multirun of kronaxis-replay really runs through submitit's local executor (the
SLURM code path minus sbatch) and through joblib."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONFIGS, ROOT

LAUNCHERS = {
    "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "parallel": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
}
#: a cheap job: the RouterBench fixture (2 tasks) replayed with oracle / random / always-*
REPLAY = ["dataset=routerbench", "dataset.path=tests/fixtures/routerbench", "routers=minimal", "seed=0,1"]


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_configs_compose_onto_the_plugin_schemas(name):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name="replay", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == LAUNCHERS[name]
    if name == "slurm":  # our values over the schema's defaults
        assert launcher.gpus_per_node == 1 and launcher.cpus_per_task == 8 and launcher.timeout_min == 240
        assert "partition" in launcher and "setup" in launcher
    if name == "parallel":
        assert launcher.n_jobs == 2 and launcher.backend == "loky"


def multirun(launcher: str, sweep_dir, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kronaxis_lab.pipelines.replay", "-m", f"hydra/launcher={launcher}", *REPLAY,
           f"hydra.sweep.dir={sweep_dir}", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def check_jobs(sweep_dir) -> list[dict]:
    jobs = [json.loads((sweep_dir / str(i) / "metrics.json").read_text()) for i in range(2)]
    for i, m in enumerate(jobs):
        assert {"oracle", "random"} <= set(m["routers"]) and m["split"] == "test"
        overrides = (sweep_dir / str(i) / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={i}" in overrides
    return jobs


@pytest.mark.slow
def test_a_two_job_multirun_runs_through_submitit_local_executor(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    multirun("local", sweep)
    jobs = check_jobs(sweep)
    # each job ran in its own submitit process: a job folder with its pickled result per submitit job id
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2 and len({p.parent.name for p in results}) == 2
    assert jobs[0]["routers"]["oracle"]["aiq"] == pytest.approx(jobs[1]["routers"]["oracle"]["aiq"])  # seed-free


@pytest.mark.slow
def test_a_two_job_multirun_runs_in_parallel_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    out = multirun("parallel", sweep)
    check_jobs(sweep)
    assert "Joblib.Parallel" in out.stdout + out.stderr  # the plugin launched them
