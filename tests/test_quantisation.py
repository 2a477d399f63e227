"""int8 that holds: static (calibrated) quantisation of the bundle graphs, and the quality-parity rule that decides
whether int8 is a bundle's default (kronaxis_lab/export/onnx_export.py, exporter.py, card.py; configs/export.yaml).

- the rule (`int8_quality_ok` over `paired_point_bootstrap` + AIQ intervals) on synthetic routing tables:
  accepted when int8 routes like fp32, refused when it is clearly worse or dearer;
- `quantize_int8(method="static")` on a tiny MLP graph: a valid QDQ graph close to fp32 whose outputs do not
  depend on the batch an input runs in, with nodes kept fp32 on request;
- the card renders both parity measures (decision agreement, quality with intervals);
- (slow) `export_bundle` with static int8 and `int8_rule=quality` on a 1-layer MiniLM tier predictor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kronaxis_lab.export.card import ModelCard
from kronaxis_lab.export.exporter import ExportSettings, int8_quality_ok
from kronaxis_lab.export.schema import ExportError
from kronaxis_lab.routing.replay import paired_point_bootstrap
from tests.conftest import compose


def tables(n: int = 600, seed: int = 0):
    """3 models: 0 cheap (right on 40 %), 1 mid (70 %), 2 premium (90 %); cost 1, 5, 20 per query."""
    rng = np.random.default_rng(seed)
    scores = (rng.random((n, 3)) < np.array([0.4, 0.7, 0.9])).astype(float)
    costs = np.tile([1.0, 5.0, 20.0], (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    return scores, costs, rng


def delta(scores, costs, a, b, aiq=(0.0, -0.01, 0.01), **kw):
    pt = paired_point_bootstrap(scores, costs, a, b, **({"n_boot": 500} | kw))
    return {"aiq": dict(zip(("diff", "lo", "hi"), aiq)),
            "accuracy": {k: pt["accuracy"][k] for k in ("diff", "lo", "hi")},
            "cost_rel": {k: pt["cost_rel"][k] for k in ("diff", "lo", "hi")}}


# -- the rule ------------------------------------------------------------------------------------------
def test_paired_point_bootstrap_by_hand():
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    costs = np.array([[1.0, 10.0], [2.0, 20.0], [1.0, 10.0], [2.0, 20.0]])
    a, b = np.array([0, 1, 1, 0]), np.array([1, 1, 1, 1])
    r = paired_point_bootstrap(scores, costs, a, b, n_boot=300, seed=3)
    # a: scores 1, 1, 1, 0 → 0.75; b: 0, 1, 1, 0 → 0.5; cost a = 1 + 20 + 10 + 2 = 33, b = 60
    assert r["accuracy"]["a"] == 0.75 and r["accuracy"]["b"] == 0.5 and r["accuracy"]["diff"] == 0.25
    assert r["cost_rel"]["a"] == 33.0 and r["cost_rel"]["b"] == 60.0
    assert r["cost_rel"]["diff"] == pytest.approx(33 / 60 - 1)
    for m in ("accuracy", "cost_rel"):
        assert r[m]["lo"] <= r[m]["diff"] <= r[m]["hi"]
    # resampling 4 queries: Δacc ∈ {0, 0.25, ..., 1} only (a beats b on query 0 alone)
    assert 0.0 <= r["accuracy"]["lo"] and r["accuracy"]["hi"] <= 1.0
    assert paired_point_bootstrap(scores, costs, a, b, n_boot=300, seed=3) == r  # seeded


def test_rule_accepts_int8_that_routes_like_fp32():
    scores, costs, rng = tables()
    fp32 = rng.integers(0, 3, len(scores))
    assert int8_quality_ok(delta(scores, costs, fp32.copy(), fp32)), "identical decisions: Δ = 0 exactly"
    # int8 changes 8 % of the decisions at random: some better, some worse, intervals straddle 0
    int8 = fp32.copy()
    flip = rng.random(len(scores)) < 0.08
    int8[flip] = rng.integers(0, 3, flip.sum())
    d = delta(scores, costs, int8, fp32)
    assert d["accuracy"]["lo"] < 0 < d["accuracy"]["hi"] and d["cost_rel"]["lo"] < 0 < d["cost_rel"]["hi"]
    assert int8_quality_ok(d)


def test_rule_refuses_int8_that_is_clearly_worse_or_dearer():
    scores, costs, rng = tables()
    fp32 = np.full(len(scores), 1)
    worse = np.where(rng.random(len(scores)) < 0.5, 0, 1)  # half the queries sent to the 40 % model instead of 70 %
    d = delta(scores, costs, worse, fp32)
    assert d["accuracy"]["hi"] < 0 and not int8_quality_ok(d)
    dearer = np.where(rng.random(len(scores)) < 0.5, 2, 1)  # better, but at a much higher cost
    d = delta(scores, costs, dearer, fp32)
    assert d["accuracy"]["hi"] > 0 and d["cost_rel"]["lo"] > 0 and not int8_quality_ok(d)
    # routes like fp32 at the operating point, but its sweep is worse: AIQ interval entirely below 0
    assert not int8_quality_ok(delta(scores, costs, fp32, fp32, aiq=(-0.02, -0.03, -0.01)))
    undefined = delta(scores, costs, fp32, fp32)
    undefined["aiq"]["hi"] = float("nan")
    assert not int8_quality_ok(undefined)


def test_settings_from_the_real_config():
    cfg = compose("export", ["run_dir=x", "onnx.quantize.method=static",
                             "onnx.quantize.static.calibrate_method=Percentile", "parity.int8_rule=quality",
                             "parity.int8_quality_min_agreement=0.85"])
    s = ExportSettings.from_config(cfg)
    assert (s.quantize_method, s.quantize_calibrate_method, s.int8_rule) == ("static", "Percentile", "quality")
    assert s.int8_quality_min_agreement == 0.85 and s.int8_min_agreement == 0.99
    assert s.quantize_op_types == ("MatMul", "Gemm") and s.splits == {"train": "train", "val": "val", "test": "test"}
    with pytest.raises(ValueError, match="onnx.quantize.method"):
        ExportSettings(quantize_method="fp16")
    with pytest.raises(ValueError, match="calibrate_method"):
        ExportSettings(quantize_calibrate_method="Distribution")
    with pytest.raises(ValueError, match="int8_rule"):
        ExportSettings(int8_rule="vibes")


# -- static quantisation of a tiny graph -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """A 2-layer MLP graph written with onnx.helper (x (batch, 16) → MatMul+Add → Relu → "head" MatMul+Add → 3
    logits): the ops a transformer's dense layers are made of, built in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("W1", rng.normal(0, 0.5, (16, 32))), ("b1", rng.normal(0, 0.1, 32)),
        ("W2", rng.normal(0, 0.5, (32, 3))), ("b2", rng.normal(0, 0.1, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"], name="layer.0/dense/MatMul"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="layer.0/dense/Add"),
             helper.make_node("Relu", ["h1"], ["h2"], name="layer.0/act/Relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["h3"], name="classifier/MatMul"),
             helper.make_node("Add", ["h3", "b2"], ["logits"], name="classifier/Add")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    d = tmp_path_factory.mktemp("tiny_graph")
    onnx.save(model, str(d / "model.onnx"))
    return d, rng


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_static_quantisation_writes_a_valid_graph_close_to_fp32(tiny_graph):
    import onnx

    from kronaxis_lab.export.onnx_export import quantize_int8

    d, rng = tiny_graph
    calib = rng.normal(0, 1, (64, 16)).astype(np.float32)  # "train" inputs
    held = rng.normal(0, 1, (40, 16)).astype(np.float32)  # held-out inputs, same distribution
    feeds = [{"x": calib[i:i + 8]} for i in range(0, len(calib), 8)]
    info = quantize_int8(d / "model.onnx", d / "model.int8.onnx", method="static", calibration_feeds=feeds)
    assert info["method"] == "static" and info["format"] == "QDQ" and info["n_calibration"] == len(calib)
    model = onnx.load(str(d / "model.int8.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    ref, q = _run(d / "model.onnx", held), _run(d / "model.int8.onnx", held)
    assert q.shape == ref.shape == (len(held), 3)
    err = np.abs(q - ref).max()
    assert 0 < err <= 0.05 * np.abs(ref).max(), (err, np.abs(ref).max())  # quantised: close, not identical
    # fixed activation scales: an input's output does not depend on the batch it runs in (dynamic int8's does)
    one = np.concatenate([_run(d / "model.int8.onnx", held[i:i + 1]) for i in range(len(held))])
    np.testing.assert_allclose(one, q, rtol=0, atol=1e-6)

    # the head kept fp32: its weight stays a float initializer that no DequantizeLinear feeds
    info = quantize_int8(d / "model.onnx", d / "keep.int8.onnx", method="static", calibration_feeds=feeds,
                         exclude_nodes=["^classifier/"])
    assert info["excluded_nodes"] == ["classifier/MatMul", "classifier/Add"]
    keep = onnx.load(str(d / "keep.int8.onnx")).graph
    head = next(n for n in keep.node if n.name == "classifier/MatMul")
    assert "W2" in head.input and "W2" in {i.name for i in keep.initializer}
    assert not any(n.op_type == "DequantizeLinear" and "W2" in n.output for n in keep.node)
    np.testing.assert_allclose(_run(d / "keep.int8.onnx", held), ref, rtol=0, atol=0.05 * np.abs(ref).max())


def test_static_quantisation_refuses_bad_inputs(tiny_graph):
    from kronaxis_lab.export.onnx_export import quantize_int8

    d, _ = tiny_graph
    with pytest.raises(ExportError, match="needs calibration inputs"):
        quantize_int8(d / "model.onnx", d / "x.onnx", method="static", calibration_feeds=[])
    with pytest.raises(ExportError, match="onnx.quantize.method"):
        quantize_int8(d / "model.onnx", d / "x.onnx", method="float8")
    with pytest.raises(ExportError, match="calibrate_method"):
        quantize_int8(d / "model.onnx", d / "x.onnx", method="static", calibration_feeds=[{"x": np.zeros((1, 16))}],
                      calibrate_method="Distribution")
    with pytest.raises(ExportError, match="match no node"):
        quantize_int8(d / "model.onnx", d / "x.onnx", method="static", exclude_nodes=["no_such_node"])


# -- the card ----------------------------------------------------------------------------------------------
def _quality(split: str, n: int, d_aiq, d_acc, d_cost, ok: bool):
    iv = lambda t: dict(zip(("diff", "lo", "hi"), t))  # noqa: E731
    return {"split": split, "n": n, "decision_agreement": 0.93, "ok": ok,
            "fp32": {"aiq": 0.61, "accuracy": 0.70, "cost_usd": 1.25},
            "int8": {"aiq": 0.61 + d_aiq[0], "accuracy": 0.70 + d_acc[0], "cost_usd": 1.25 * (1 + d_cost[0])},
            "delta": {"aiq": iv(d_aiq), "accuracy": iv(d_acc), "cost_rel": iv(d_cost)}}


def test_card_shows_agreement_and_quality_parity():
    parity = {"n": 1000, "n_edge_cases": 3, "sample": "val+test", "reference": "the trained classifier",
              "fp32": {"max_abs_diff": 2e-6, "mean_abs_diff": 1e-7, "decision_agreement": 1.0},
              "int8": {"max_abs_diff": 0.03, "mean_abs_diff": 0.004, "decision_agreement": 0.931, "batch_size": 64,
                       "batch1_max_abs_diff": 0.03, "batch1_decision_agreement": 0.931},
              "int8_rule": "quality", "int8_rule_applied": "quality", "int8_agreement_floor": 0.9,
              "int8_agreement_ok": True, "int8_quality_ok": True, "int8_ok": True, "default_variant": "int8",
              "quality": {"n_boot": 1000, "ci": 0.95, "judged_on": "val",
                          "val": _quality("val", 527, (-0.002, -0.009, 0.004), (-0.004, -0.015, 0.008),
                                          (0.01, -0.02, 0.04), True),
                          "test": _quality("test", 1581, (0.001, -0.003, 0.005), (0.002, -0.004, 0.009),
                                           (-0.01, -0.03, 0.01), True)}}
    meta = {"bundle_id": "abc", "premium": "big", "default_variant": "int8", "parity": parity,
            "classifier": {"kind": "x.OnnxTransformerRuntime", "files": {"onnx_fp32": "model.onnx"},
                           "onnx": {"int8": {"method": "static", "weight_type": "QInt8", "per_channel": True,
                                             "activation_type": "QUInt8", "format": "QDQ",
                                             "calibrate_method": "MinMax", "n_calibration": 256,
                                             "excluded_nodes": []}}}}
    card = ModelCard.from_bundle(meta, {}).render()
    assert re.search(r"\*\*Parity \(int8 vs the trained classifier\):\*\* .*decision agreement 93\.10% "
                     r"\(batches of 64\); one query per call: .*decision agreement 93\.10%", card)
    assert re.search(r"\*\*int8 check:\*\* agreement ≥ 90\.0% required → passed \(rule `quality`\)", card)
    assert "static quantisation, QInt8 weights per channel, QUInt8 activations (QDQ), calibrated (MinMax) on 256 " \
           "train queries" in card
    assert re.search(r"\*\*Quality parity \(int8 − fp32, 95% paired bootstrap, 1000 resamples.*\):\*\* on val passed "
                     r"\(decides\)", card)
    val = re.search(r"\| val \(val\) \| 527 \| 0\.61 \| 0\.608 \| -0\.0020 \[-0\.0090, \+0\.0040\] \| 70\.00% \| "
                    r"69\.60% \| -0\.40% \[-1\.50%, \+0\.80%\] \| \$1\.25 \| \$1\.26[23] \| \+1\.00% \[-2\.00%, \+4\.00%\] "
                    r"\| 93\.0% \|", card)
    assert val, card
    assert "| test (test) | 1581 |" in card and "**Default variant:** int8" in card

    parity |= {"int8_quality_ok": False, "int8_ok": False, "default_variant": "fp32"}
    parity["quality"]["val"] = _quality("val", 527, (-0.02, -0.03, -0.01), (-0.04, -0.06, -0.02), (0, -0.01, 0.01),
                                        False)
    card = ModelCard.from_bundle(meta | {"default_variant": "fp32", "parity": parity}, {}).render()
    assert "on val FAILED (decides)" in card and "**Default variant:** fp32" in card


# -- the exporter end to end (slow: trains a 1-layer MiniLM tier predictor) ----------------------------------
@pytest.mark.slow
def test_export_with_static_int8_and_the_quality_rule(tmp_path):
    import onnx

    from kronaxis_lab.data.tables import RoutingDataset
    from kronaxis_lab.export.exporter import export_bundle
    from kronaxis_lab.pipelines.train import run as train_run
    from tests.test_export import routing_dataset

    data = routing_dataset(n=240).save(tmp_path / "ds")
    train_run(compose("train", ["dataset=saved", f"dataset.path={data}", "classifier=tier_predictor",
                                "classifier.num_layers=1", "classifier.max_length=32", "classifier.show_progress=false",
                                "classifier.early_stopping_patience=null", "classifier.training_args.num_train_epochs=4",
                                "classifier.training_args.learning_rate=5e-4",
                                "classifier.training_args.eval_strategy=no",
                                "classifier.training_args.save_strategy=no"], tmp_path / "train"))
    ds = RoutingDataset.load(data)
    s = ExportSettings(quantize_method="static", quantize_n_calibration=64, int8_rule="quality", parity_n=64,
                       n_boot=200, replay=False)
    res = export_bundle(tmp_path / "train" / "classifier", tmp_path / "bundle", ds, policy_name="threshold",
                        policy_config={"_target_": "kronaxis_lab.routing.policies.Threshold"},
                        default_operating_point={"target": "pct_premium_accuracy", "value": 0.95}, settings=s)
    meta = json.loads((tmp_path / "bundle" / "router.json").read_text())
    q8 = meta["classifier"]["onnx"]["int8"]
    assert q8["method"] == "static" and q8["n_calibration"] == 64 and q8["calibrate_method"] == "MinMax"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "bundle" / "model.int8.onnx")).graph.node}
    par = meta["parity"]
    # calibrated once: one query per call decides exactly as the batches do
    assert par["int8"]["batch1_decision_agreement"] == par["int8"]["decision_agreement"]
    assert par["int8"]["batch1_max_abs_diff"] == pytest.approx(par["int8"]["max_abs_diff"], abs=1e-5)
    qp = par["quality"]
    n_val, n_test = ds.matrices("val").n, ds.matrices("test").n
    assert (qp["val"]["split"], qp["val"]["n"], qp["test"]["split"], qp["test"]["n"]) == ("val", n_val, "test", n_test)
    for role in ("val", "test"):
        for m in ("aiq", "accuracy", "cost_rel"):
            d = qp[role]["delta"][m]
            assert d["lo"] <= d["diff"] <= d["hi"], (role, m, d)
        assert qp[role]["ok"] == int8_quality_ok(qp[role]["delta"])
    assert par["int8_rule_applied"] == "quality" and par["int8_agreement_floor"] == 0.9
    assert par["int8_quality_ok"] == qp["val"]["ok"]  # val decides, test is reported
    assert par["int8_ok"] == (par["int8_agreement_ok"] and par["int8_quality_ok"])
    assert (meta["default_variant"] == "int8") == par["int8_ok"] == (res["bundle"].default_variant == "int8")
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert re.search(r"\*\*int8 check:\*\* agreement ≥ 90\.0% required → (passed|FAILED) \(rule `quality`\)", card)
    assert f"| val (val) | {n_val} |" in card and f"| test (test) | {n_test} |" in card
