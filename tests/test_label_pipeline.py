"""The label pipeline end to end on the real configs (fake in-process backends): run dir contents, resume,
config wiring (backends, styles, graders, cache key), and replay reading the result unchanged."""

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from kronaxis_lab.data.tables import RoutingDataset
from kronaxis_lab.pipelines import label, replay
from tests.conftest import CONFIGS, compose

FAKE = "tests.test_label_runner.FakeBackend"


def write_data(data_dir, n=12):
    (data_dir / "gsm8k").mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"What is {i} + {i}? Show your work.", "answer": f"#### {2 * i}"} for i in range(n)]
    (data_dir / "gsm8k/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def label_cfg(tmp_path, overrides=(), out="run"):
    write_data(tmp_path / "data")
    cfg = compose("label", ["dataset=gsm8k", f"paths.data_dir={tmp_path / 'data'}",
                            f"paths.data_mirror={tmp_path / 'none'}", "runner.progress=false", *overrides],
                  tmp_path / out)
    with open_dict(cfg):  # the local_cpu fleet's real models, answered by fakes (smart = tier 1)
        cfg.backends = {"smollm2-135m-instruct": {"_target_": FAKE, "smart": False},
                        "gemma-3-270m": {"_target_": FAKE, "smart": True, "chat": False}}
    return cfg


def test_label_run_dir_is_a_dataset_and_replay_reads_it(tmp_path):
    cfg = label_cfg(tmp_path)
    res = label.run(cfg)
    out = tmp_path / "run"
    for f in ("outcomes.parquet", "queries.parquet", "fleet.json", "dataset.json", "summary.md", "summary.json",
              "details.parquet", "label_cache.sqlite"):
        assert (out / f).is_file(), f
    ds = RoutingDataset.load(out)
    assert ds.fleet.names == ["smollm2-135m-instruct", "gemma-3-270m"]
    assert ds.fleet["gemma-3-270m"].price_out == 1.9  # the fleet record is the configured one (no backends)
    o = ds.outcomes
    assert len(o) == 24 and o["error"].isna().all()
    # the smart fake (gemma) is right on every question, the other only on "0 + 0"
    assert o.groupby("model")["score"].sum().to_dict() == {"gemma-3-270m": 12.0, "smollm2-135m-instruct": 1.0}
    assert (o["cost_usd"] > 0).all() and (o["latency_s"] > 0).all()
    details = pd.read_parquet(out / "details.parquet")
    assert set(details.columns) >= {"query_id", "model", "cached", "retries", "finish_reason"}
    md = (out / "summary.md").read_text()
    assert "## Per model" in md and "## Per model and task" in md and "gemma-3-270m" in md
    assert res["summary"].set_index("model").loc["gemma-3-270m", "accuracy"] == 1.0

    rcfg = compose("replay", ["dataset=saved", f"dataset.path={out}", "routers=minimal"], tmp_path / "replay")
    rep = replay.run(rcfg)
    assert (tmp_path / "replay/metrics.json").is_file() and len(rep["table"]) > 0


def test_styles_follow_the_backend_config_and_resume(tmp_path):
    cfg = label_cfg(tmp_path)
    plans = {p.name: p for p in label.make_plans(cfg, label.Fleet.from_config(
        {"models": OmegaConf.to_container(cfg.fleet.models)}))}
    assert plans["gemma-3-270m"].style == "completion"  # chat: false in its backend config
    assert plans["smollm2-135m-instruct"].style == "chat"
    with open_dict(cfg):  # an explicit style in the fleet wins over the inference
        cfg.fleet.prompt_styles = {"smollm2-135m-instruct": "completion"}
        cfg.fleet.chunk_sizes = {"gemma-3-270m": 5}
    plans = {p.name: p for p in label.make_plans(cfg, label.Fleet.from_config(
        {"models": OmegaConf.to_container(cfg.fleet.models)}))}
    assert plans["smollm2-135m-instruct"].style == "completion" and plans["gemma-3-270m"].chunk_size == 5
    assert plans["smollm2-135m-instruct"].chunk_size is None  # → the backend's batch_size at run time
    with open_dict(cfg):
        cfg.fleet.prompt_styles = {}
    label.run(cfg)
    again = label.run(cfg)
    assert again["summary"]["calls"].tolist() == [0, 0] and again["summary"]["cached"].tolist() == [12, 12]
    # a different generation parameter is a different call
    cfg2 = label_cfg(tmp_path, ["prompt.templates.gsm8k.max_tokens=64"])
    third = label.run(cfg2)
    assert third["summary"]["calls"].tolist() == [12, 12]
    # while a transport-only change (ignored backend key) keeps the cache
    cfg3 = label_cfg(tmp_path, ["prompt.templates.gsm8k.max_tokens=64"])
    with open_dict(cfg3):
        cfg3.backends["gemma-3-270m"]["batch_size"] = 99
    assert label.run(cfg3)["summary"]["calls"].tolist() == [0, 0]


def test_models_subset_and_single_grader(tmp_path):
    cfg = label_cfg(tmp_path, ["models=[gemma-3-270m]", "grader=numeric", "dataset.limit=5"])
    res = label.run(cfg)
    ds = res["dataset"]
    assert ds.fleet.names == ["gemma-3-270m"] and len(ds.outcomes) == 5


def test_shared_cache_dir_serves_another_run(tmp_path):
    shared = tmp_path / "shared"
    first = label.run(label_cfg(tmp_path, [f"cache.shared_dir={shared}", "dataset.limit=6"], out="first"))
    assert first["summary"]["calls"].tolist() == [6, 6] and (shared / "label_cache.sqlite").is_file()
    # another run dir: the 6 shared questions are hits (copied into its own cache), 6 new ones are called
    res = label.run(label_cfg(tmp_path, [f"cache.shared_dir={shared}"], out="second"))
    assert res["summary"]["calls"].tolist() == [6, 6] and res["summary"]["cached"].tolist() == [6, 6]
    third = label.run(label_cfg(tmp_path, [f"cache.shared_dir={shared}"], out="third"))
    assert third["summary"]["calls"].tolist() == [0, 0]


def test_local_cpu_fleet_and_llm_judge_need_a_judge(tmp_path):
    cfg = compose("label", ["fleet=local_cpu"], tmp_path / "x")
    fleet = OmegaConf.to_container(cfg.fleet, resolve=True)
    assert set(fleet["backends"]) == set(fleet["models"]) == {"smollm2-135m-instruct", "gemma-3-270m"}
    assert fleet["backends"]["gemma-3-270m"]["default_stop"] == []
    assert fleet["models"]["smollm2-135m-instruct"]["tier"] < fleet["models"]["gemma-3-270m"]["tier"]
    with pytest.raises(label.LabelError, match=r"task 'mt_bench'.*needs a judge backend"):
        label.make_graders(cfg, ["mt_bench"])


@pytest.mark.parametrize("fleet", sorted(p.stem for p in (CONFIGS / "fleet").glob("*.yaml")
                                         if "backends" in p.read_text()))
def test_live_fleets_compose_with_a_backend_per_model(fleet, tmp_path):
    cfg = compose("label", [f"fleet={fleet}"], tmp_path)
    node = OmegaConf.to_container(cfg.fleet, resolve=False)
    for name in node["models"]:
        assert "_target_" in node["backends"][name], f"{fleet}: model {name} has no backend"
