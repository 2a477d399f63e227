"""Build a bundle from any trained classifier: its runtime files (+ int8 graphs), cost model, policy, parity,
metrics, card.

    export_bundle(classifier_dir, out_dir, dataset, policy_name="wtp", policy_config={...}, ...)

Steps (each a function below, each checked, so a bundle that exists is a bundle that works):
1. `load_exportable`: refuse a classifier without `export_runtime` (before loading any weights), load it,
   check its models against the fleet;
2. `write_runtime`: the classifier writes its runtime node and files (`export_runtime`, no pickle); every
   ONNX graph of the node tree gets an int8 copy (`quantize_graphs`: dynamic, or static calibrated on train
   queries, `onnx.quantize.method`);
3. `fit_costs`: fit the one decision-time cost model (`kronaxis_lab.routing.costs`) on the train split, with
   the prompt-token counter replay uses (bundled when the runtime's own tokenizer counts differently or it
   has none);
4. `parity_probabilities`: P̂ of the runtime (every variant) vs the trained classifier on held-out queries +
   edge cases; fp32 must match (max |Δp| ≤ tolerance; for a `discontinuous` runtime such as kNN, that share of
   rows), else the export fails;
5. `operating_parameter`: the `calibration` target on val (calibrate_router), else the default operating
   point (cheapest point reaching 95 % of premium accuracy, on val);
6. `quality_parities` + `parity_decisions`: int8 vs fp32 routing quality on val and test (ΔAIQ, Δaccuracy and
   Δcost at the operating point, paired-bootstrap intervals) and int8's decision agreement with the trained
   classifier; `parity.int8_rule` decides on them whether int8 is the default: `agreement` (≥
   `int8_min_agreement`) or `quality` (≥ `int8_quality_min_agreement` and, on val only, no interval entirely on
   the wrong side of 0, `int8_quality_ok`); else the bundle defaults to fp32 and says so in router.json and
   the card;
7. `replay_metrics`: the staged bundle itself (`Bundle`) replayed on the test split beside the reference
   routers (`kronaxis_lab.export.replay`: the decision code the server runs, the bundle's cost model) →
   metrics.json, the same replay `kronaxis-replay bundle=<dir>` computes;
8. `write_files`: README.md, then router.json with the sha256 of every other file; the staging directory is
   moved into place and `reload_check` re-loads it with `load_bundle` (predictions must equal the ones just
   measured).
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab.classifiers.base import META_FILE, ClassifierLoadError, load_classifier
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.export.bundle import (
    FORMAT_VERSION,
    KIND,
    ROUTER_FILE,
    Bundle,
    BundleTokenizer,
    bundle_id,
    encode_param,
    file_hashes,
    instantiate_node,
    instantiate_policy,
    load_bundle,
)
from kronaxis_lab.export.card import ModelCard
from kronaxis_lab.export.cascade import fit_cascade, save_cascade
from kronaxis_lab.export.metadata import fit_metadata
from kronaxis_lab.export.onnx_export import CALIBRATE_METHODS, QUANTIZE_METHODS, quantize_int8
from kronaxis_lab.export.replay import bundle_metrics, replay_bundle
from kronaxis_lab.export.runtimes import BundleRuntime, RuntimeOptions, load_runtime, reorder
from kronaxis_lab.export.schema import ExportError, walk_nodes
from kronaxis_lab.routing.calibration import calibrate_router
from kronaxis_lab.routing.costs import CostModel, TokenCounter
from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE, operating_point
from kronaxis_lab.routing.policies import Policy
from kronaxis_lab.routing.replay import paired_bootstrap, paired_point_bootstrap, replay_matrices
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext
from kronaxis_lab.serving.governance import endpoints_from_fleet

log = logging.getLogger("kronaxis_lab.export")

VARIANTS = ("fp32", "int8")
#: parity.int8_rule: `agreement` = int8 is the default when its decision agreement with the trained classifier
#: reaches int8_min_agreement (strict); `quality` = agreement ≥ int8_quality_min_agreement AND, on val, the
#: paired-bootstrap intervals of int8 − fp32 are not entirely below 0 for AIQ and accuracy at the operating
#: point, nor entirely above 0 for its cost (`int8_quality_ok`)
INT8_RULES = ("agreement", "quality")
COST_TOKENIZER = "cost_tokenizer"


@dataclass
class ExportSettings:
    """Knobs of `export_bundle` (configs/export.yaml); validated here so a bad value fails before any work."""

    opset: int = 17
    max_length: int | None = None  # None = the classifier's
    quantize_per_channel: bool = True
    quantize_reduce_range: bool = True
    quantize_exclude_nodes: tuple[str, ...] = ()
    quantize_method: str = "dynamic"  # dynamic | static (onnx.quantize.method)
    quantize_calibrate_method: str = "MinMax"  # static: MinMax | Percentile | Entropy
    quantize_n_calibration: int = 256  # static: train queries the activation ranges are read from
    quantize_calibration_batch: int = 16  # static: queries per calibration batch
    quantize_percentile: float = 99.999  # static + Percentile
    quantize_op_types: tuple[str, ...] = ("MatMul", "Gemm")  # static: op types quantised (constant weights only)
    parity_n: int = 1000
    fp32_max_abs_diff: float = 1e-4
    fp32_min_row_share: float = 0.99  # discontinuous runtimes (kNN): share of rows within fp32_max_abs_diff
    int8_min_agreement: float = 0.99  # int8_rule=agreement: the strict decision-agreement bar
    int8_rule: str = "quality"  # quality (relaxed agreement floor + routing quality on val) | agreement (strict)
    int8_quality_min_agreement: float = 0.90  # int8_rule=quality: the agreement floor
    quality_ci: float = 0.95  # paired-bootstrap interval level of the quality parity (n_boot resamples)
    prefer_variant: str = "int8"
    batch_size: int = 64
    intra_op_threads: int | None = None
    replay: bool = True
    n_boot: int = 1000
    seed: int = 0
    overwrite: bool = False
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"onnx.opset must be ≥ 17, got {self.opset}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"onnx.max_length must be ≥ 2 (or null), got {self.max_length}")
        if self.parity_n < 1:
            raise ValueError(f"parity.n must be ≥ 1, got {self.parity_n}")
        if not self.fp32_max_abs_diff > 0:
            raise ValueError(f"parity.fp32_max_abs_diff must be > 0, got {self.fp32_max_abs_diff}")
        if not 0 <= self.fp32_min_row_share <= 1:
            raise ValueError(f"parity.fp32_min_row_share must be in [0, 1], got {self.fp32_min_row_share}")
        if not 0 <= self.int8_min_agreement <= 1:
            raise ValueError(f"parity.int8_min_agreement must be in [0, 1], got {self.int8_min_agreement}")
        if self.quantize_method not in QUANTIZE_METHODS:
            raise ValueError(f"onnx.quantize.method must be one of {QUANTIZE_METHODS}, got {self.quantize_method!r}")
        if self.quantize_calibrate_method not in CALIBRATE_METHODS:
            raise ValueError(f"onnx.quantize.static.calibrate_method must be one of {CALIBRATE_METHODS}, "
                             f"got {self.quantize_calibrate_method!r}")
        if self.quantize_n_calibration < 1 or self.quantize_calibration_batch < 1:
            raise ValueError("onnx.quantize.static.n_calibration and batch_size must be ≥ 1")
        if self.int8_rule not in INT8_RULES:
            raise ValueError(f"parity.int8_rule must be one of {INT8_RULES}, got {self.int8_rule!r}")
        if not 0 <= self.int8_quality_min_agreement <= 1:
            raise ValueError(f"parity.int8_quality_min_agreement must be in [0, 1], got "
                             f"{self.int8_quality_min_agreement}")
        if not 0 < self.quality_ci < 1:
            raise ValueError(f"parity.quality_ci must be in (0, 1), got {self.quality_ci}")
        if self.prefer_variant not in VARIANTS:
            raise ValueError(f"parity.prefer_variant must be one of {VARIANTS}, got {self.prefer_variant!r}")
        if self.batch_size < 1:
            raise ValueError(f"runtime.batch_size must be ≥ 1, got {self.batch_size}")
        missing = {"train", "val", "test"} - set(self.splits)
        if missing:
            raise ValueError(f"splits must name the train, val and test splits (missing {sorted(missing)})")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], splits: Mapping[str, str] | None = None) -> "ExportSettings":
        """The settings of a composed configs/export.yaml (`onnx`, `parity`, `runtime`, `metrics`, `seed`,
        `overwrite`: every key read from there, so the YAML holds the one default); `splits`: {train, val,
        test} split names (default: train, val and `metrics.split`)."""
        onnx, par, run, met = cfg["onnx"], cfg["parity"], cfg["runtime"], cfg["metrics"]
        q = onnx["quantize"]
        st = q["static"]
        return cls(
            opset=int(onnx["opset"]), max_length=onnx.get("max_length"),
            quantize_method=str(q["method"]), quantize_per_channel=bool(q["per_channel"]),
            quantize_reduce_range=bool(q["reduce_range"]),
            quantize_exclude_nodes=tuple(str(x) for x in (q.get("exclude_nodes") or [])),
            quantize_calibrate_method=str(st["calibrate_method"]), quantize_n_calibration=int(st["n_calibration"]),
            quantize_calibration_batch=int(st["batch_size"]), quantize_percentile=float(st["percentile"]),
            quantize_op_types=tuple(str(x) for x in st["op_types"]),
            parity_n=int(par["n"]), fp32_max_abs_diff=float(par["fp32_max_abs_diff"]),
            fp32_min_row_share=float(par["fp32_min_row_share"]), int8_rule=str(par["int8_rule"]),
            int8_min_agreement=float(par["int8_min_agreement"]),
            int8_quality_min_agreement=float(par["int8_quality_min_agreement"]), quality_ci=float(par["quality_ci"]),
            prefer_variant=str(par["prefer_variant"]), batch_size=int(run["batch_size"]),
            intra_op_threads=run.get("intra_op_threads"), replay=bool(met["replay"]), n_boot=int(met["n_boot"]),
            seed=int(cfg["seed"]), overwrite=bool(cfg["overwrite"]),
            splits=dict(splits or {"train": "train", "val": "val", "test": str(met["split"])}),
        )


def classifier_class(classifier_dir: str | Path) -> type:
    """The class recorded in classifier.json (imported, not instantiated)."""
    path = Path(classifier_dir) / META_FILE
    if not path.is_file():
        raise ClassifierLoadError(f"{path} is missing: {classifier_dir} is not a saved classifier")
    try:
        qual = json.loads(path.read_text())["class"]
        module, _, name = qual.rpartition(".")
        return getattr(importlib.import_module(module), name)
    except (KeyError, json.JSONDecodeError, ImportError, AttributeError) as e:
        raise ClassifierLoadError(f"{path}: cannot resolve the classifier class: {e}") from e


def check_exportable(klass: type, where: str = "the classifier") -> None:
    """Raise `ExportError` unless `klass` has an `export_runtime` method (the classifier contract's export hook)."""
    if isinstance(klass, type) and callable(getattr(klass, "export_runtime", None)):
        return
    name = getattr(klass, "__name__", str(klass))
    raise ExportError(f"{where} is a {name}, which has no export_runtime method: it cannot be exported to a bundle "
                      "(a classifier joins the bundle format with export_runtime(directory) -> node, see "
                      "kronaxis_lab/export/runtimes.py)")


class RuntimePredictor(Predictor):
    """Replay `Predictor` over a runtime (one variant), columns in the fleet's order, cached per query set: the
    calibration and the sweep reuse one pass."""

    def __init__(self, runtime: BundleRuntime, variant: str, model_names: Sequence[str]):
        self.runtime, self.variant, self.model_names = runtime, variant, list(model_names)
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        key = tuple(mats.queries["query_id"].astype(str))
        if key not in self._cache:
            texts = mats.queries["text"].astype(str).tolist()
            P = self.runtime.predict_proba(texts, self.variant)
            self._cache[key] = reorder(np.asarray(P, float), self.runtime.label_order, self.model_names)
        return self._cache[key]


def _decide(policy, fleet, P: np.ndarray, cost: np.ndarray, tasks: Sequence[str], param: float) -> np.ndarray:
    policy.bind(fleet, pd.DataFrame({"task": list(tasks)}))
    return np.asarray(policy.choose(P, cost, [param])[0], dtype=np.int64)


def edge_cases(texts: Sequence[str], max_length: int) -> list[str]:
    """Inputs that exercise the tokenizer path: empty, far over max_length (truncation), non-ASCII."""
    base = next((t for t in texts if t.strip()), "route this query")
    long = " ".join([base] * (4 * max_length // max(1, len(base.split())) + 2))
    return ["", long, "Ünïcödé — 数学の問題を解いてください 🚀 " + base]


def parity_sample(val, test, n: int, seed: int) -> tuple[list[str], list[str]]:
    q = pd.concat([val.queries, test.queries], ignore_index=True)
    if len(q) > n:
        q = q.sample(n=n, random_state=seed).reset_index(drop=True)
    return q["text"].astype(str).tolist(), q["task"].astype(str).tolist()


def _diff(P: np.ndarray, R: np.ndarray, d: np.ndarray, dr: np.ndarray, tiers: np.ndarray) -> dict[str, float]:
    """max/mean |Δp|, the share of identical decisions and, for information, the share of decisions of the same
    tier (a swap between two same-tier models costs less than a change of tier)."""
    a = np.abs(np.asarray(P, float) - np.asarray(R, float))
    return {"max_abs_diff": float(a.max()) if a.size else 0.0, "mean_abs_diff": float(a.mean()) if a.size else 0.0,
            "decision_agreement": float(np.mean(d == dr)) if len(d) else 1.0,
            "tier_agreement": float(np.mean(tiers[d] == tiers[dr])) if len(d) else 1.0}


def governance_node(node: Mapping[str, Any] | None, fleet) -> dict[str, Any] | None:
    """Governance config for router.json: endpoints from the fleet's data_classes when none are configured;
    configured endpoints must name fleet models."""
    if not node:
        return None
    node = {k: v for k, v in dict(node).items() if k != "defaults"}
    endpoints = dict(node.get("endpoints") or {})
    if not endpoints:
        endpoints = endpoints_from_fleet(fleet)
    unknown = sorted(set(endpoints) - set(fleet.names))
    if unknown:
        raise ExportError(f"governance.endpoints names {unknown}, which are not models of the fleet {fleet.names} "
                          "(pick the governance config of this fleet, or governance=default to use its data_classes)")
    node["endpoints"] = endpoints
    return node


# -- the steps ---------------------------------------------------------------------------------------
@dataclass
class Splits:
    train: Matrices
    val: Matrices
    test: Matrices


def load_exportable(classifier_dir: Path, fleet):
    """Step 1: the saved classifier, checked against the fleet."""
    check_exportable(classifier_class(classifier_dir), str(classifier_dir / META_FILE))
    clf = load_classifier(classifier_dir)
    if hasattr(clf, "show_progress"):
        clf.show_progress = False
    labels = list(clf.model_names_)
    if sorted(labels) != sorted(fleet.names):
        raise ExportError(f"{classifier_dir} predicts {labels}, but the dataset's fleet is {fleet.names}: "
                          "export with the dataset the classifier was trained on")
    return clf, labels


def calibration_feeds(directory: Path, node: Mapping[str, Any], texts: Sequence[str],
                      batch_size: int) -> list[dict[str, np.ndarray]]:
    """Static quantisation's calibration inputs: `texts` tokenised by the graph node's own bundled tokenizer
    (what the runtime feeds the graph), in batches of `batch_size` (padded to each batch's longest)."""
    tok = BundleTokenizer.from_node(directory, node)
    return [tok.encode(list(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]


def quantize_graphs(node: dict[str, Any], stage: Path, s: ExportSettings,
                    calibration_texts: Sequence[str] = ()) -> None:
    """int8 copy of every ONNX graph in the node tree (`<name>.int8.onnx` beside `<name>.onnx`), in place;
    `calibration_texts` (train queries) calibrate the activation ranges of `onnx.quantize.method=static`."""
    texts = list(calibration_texts)[: s.quantize_n_calibration]
    if s.quantize_method == "static" and not texts:
        raise ExportError("onnx.quantize.method=static needs train queries to calibrate on: the train split is empty")
    for _, rel, n in walk_nodes(node):
        fp32 = (n.get("files") or {}).get("onnx_fp32")
        if not fp32:
            continue
        int8 = fp32[: -len(".onnx")] + ".int8.onnx" if fp32.endswith(".onnx") else fp32 + ".int8"
        feeds = calibration_feeds(stage / rel, n, texts, s.quantize_calibration_batch) \
            if s.quantize_method == "static" else None
        n.setdefault("onnx", {})["int8"] = quantize_int8(
            stage / rel / fp32, stage / rel / int8, s.quantize_per_channel, s.quantize_reduce_range,
            s.quantize_exclude_nodes, method=s.quantize_method, calibration_feeds=feeds,
            calibrate_method=s.quantize_calibrate_method, op_types=s.quantize_op_types,
            percentile=s.quantize_percentile)
        n["files"]["onnx_int8"] = int8


def write_runtime(clf, stage: Path, val: Matrices, labels: list[str], s: ExportSettings,
                  train: Matrices | None = None) -> dict[str, Any]:
    """Step 2: the classifier's runtime node + files (no pickle), then the int8 graphs (static quantisation
    calibrates on a seeded sample of the `train` queries: never on the held-out splits parity is judged on)."""
    sample = [t for t in val.queries["text"].astype(str).head(2)] or None
    node = clf.export_runtime(stage, opset=s.opset, max_length=s.max_length, sample_texts=sample)
    node = json.loads(json.dumps(_clean(node), allow_nan=False))  # plain JSON from here on
    if list(node.get("label_order") or []) != labels:
        raise ExportError(f"{type(clf).__name__}.export_runtime: node label_order {node.get('label_order')} is not "
                          f"the classifier's {labels}")
    pickled = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*")
                     if p.suffix in (".pkl", ".pickle", ".joblib"))
    if pickled:
        raise ExportError(f"{type(clf).__name__}.export_runtime wrote pickle files {pickled}: a bundle holds data only")
    calib: list[str] = []
    if train is not None and train.n:
        q = train.queries
        q = q.sample(n=min(len(q), s.quantize_n_calibration), random_state=s.seed)
        calib = q["text"].astype(str).tolist()
    quantize_graphs(node, stage, s, calib)
    return node


def fit_costs(train: Matrices, val: Matrices, fleet, stage: Path, runtime: BundleRuntime,
              token_counter: TokenCounter | None) -> tuple[CostModel, TokenCounter, dict[str, str]]:
    """Step 3: the cost model replay uses, fitted on train → (cost model, its counter, extra bundle files).

    The counter is `token_counter` (what replay counts with); when the runtime's own tokenizer counts the
    train prompts differently (or the runtime has none), the counter's tokenizer is bundled, so the server
    counts the same."""
    own = runtime.tokenizer
    texts = train.queries["text"].astype(str).tolist()
    counter, extra, name = own, {}, None
    if token_counter is not None:
        name = str(getattr(token_counter, "name", type(token_counter).__name__))
        if own is None or not np.array_equal(own.count(texts), np.asarray(token_counter.count(texts))):
            token_counter.tokenizer.save_pretrained(stage / COST_TOKENIZER)
            counter, extra = BundleTokenizer(stage / COST_TOKENIZER, 2), {"cost_tokenizer": COST_TOKENIZER}
            log.info("the runtime's tokenizer does not count prompts like %s: bundling it as %s/", name, COST_TOKENIZER)
    elif own is None:
        raise ExportError(f"a {type(runtime).__name__} has no tokenizer to count prompt tokens: configure the "
                          "cost model's token counter (tokenizer=minilm)")
    val_texts = val.queries["text"].astype(str).tolist()
    cost_model = CostModel.fit(train, fleet, counter.count(texts), tokenizer=name, val=val,
                               val_token_counts=counter.count(val_texts) if val.n else None)
    return cost_model, counter, extra


def parity_probabilities(clf, runtime: BundleRuntime, texts: list[str], model_names: list[str],
                         s: ExportSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 4: P̂ of the trained classifier and of each runtime variant (fleet order); the fp32 runtime must
    reproduce the classifier (every row within the tolerance; for a discontinuous runtime, that share of rows)."""
    P_ref = reorder(np.asarray(clf.predict_proba(texts), float), list(clf.model_names_), model_names)
    P = {v: reorder(np.asarray(runtime.predict_proba(texts, v), float), runtime.label_order, model_names)
         for v in runtime.variants}
    rows = np.abs(P["fp32"] - P_ref).max(axis=1) if len(texts) else np.zeros(0)
    worst = float(rows.max()) if rows.size else 0.0
    within = float(np.mean(rows <= s.fp32_max_abs_diff)) if rows.size else 1.0
    what = f"the fp32 {type(runtime).__name__} does not reproduce the {type(clf).__name__}"
    if runtime.discontinuous and within < s.fp32_min_row_share:
        raise ExportError(f"{what}: {within:.2%} of {len(texts)} queries within max |Δp| ≤ {s.fp32_max_abs_diff:g} < "
                          f"{s.fp32_min_row_share:.0%} (parity.fp32_min_row_share)")
    if not runtime.discontinuous and worst > s.fp32_max_abs_diff:
        raise ExportError(f"{what}: max |Δp| = {worst:.3g} > {s.fp32_max_abs_diff:g} on {len(texts)} queries "
                          "(parity.fp32_max_abs_diff)")
    return P_ref, P


def operating_parameter(router: PolicyRouter, ctx: ReplayContext, policy: Policy, splits: Splits, fleet,
                        calibration: Mapping[str, Any] | None, default_op: Mapping[str, Any] | None,
                        s: ExportSettings, dataset_name: str) -> tuple[dict[str, Any], str, dict | None, list[str]]:
    """Step 5: (operating point, where it came from, calibration result, warnings), on fp32 numerics."""
    test, val = splits.test, splits.val
    P_test = router.predictions(ctx, test)
    if calibration:
        if val.n == 0:
            raise ExportError(f"calibration needs a non-empty '{s.splits['val']}' split in {dataset_name}")
        op = calibrate_router(router, ctx, P_test, ctx.expected_cost, n_boot=s.n_boot, seed=s.seed, **dict(calibration))
        return op, "calibration", op, []
    if val.n > 0 and default_op:
        op = calibrate_router(router, ctx, P_test, ctx.expected_cost, n_boot=s.n_boot, seed=s.seed, **dict(default_op))
        return op, "default_operating_point", None, []
    # no val split: the replay's operating point on test (optimistic: chosen on the reported split)
    policy.bind(fleet, test.queries)
    params, choices = policy.sweep(P_test, ctx.expected_cost)
    rows = np.arange(test.n)
    acc = np.array([test.scores[rows, c].mean() for c in choices])
    cst = np.array([test.costs[rows, c].sum() for c in choices])
    premium_acc = float(test.scores[:, fleet.index(fleet.premium)].mean())
    i = operating_point(cst, acc, PREMIUM_ACCURACY_SHARE * premium_acc)
    op = {"param": float(params[i]), "rule": "cheapest test point with ≥ 95% of premium accuracy",
          "test_accuracy": float(acc[i])}
    return op, "test_operating_point", None, [
        "no validation split: the operating point was chosen on the test split, so the reported test metrics at "
        "it are optimistic"]


def parity_decisions(runtime: BundleRuntime, policy: Policy, fleet, texts: list[str], tasks: list[str],
                     cost_sample: np.ndarray, P_ref: np.ndarray, P: dict[str, np.ndarray], param: float,
                     n_sample: int, n_edge: int, s: ExportSettings,
                     quality: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Step 6: decision agreement of each variant with the trained classifier (int8 also one query per call),
    and the verdict of `parity.int8_rule` on int8 (with `quality`, the `quality_parity` of int8 vs fp32 on
    val and test) → (parity, warnings)."""
    d_ref = _decide(policy, fleet, P_ref, cost_sample, tasks, param)
    tiers = fleet.tiers
    parity: dict[str, Any] = {"n": n_sample, "n_edge_cases": n_edge, "sample": f"{s.splits['val']}+{s.splits['test']}",
                              "seed": s.seed, "reference": "the trained classifier", "runtime": type(runtime).__name__,
                              "fp32_max_abs_diff_allowed": s.fp32_max_abs_diff,
                              "int8_min_agreement": s.int8_min_agreement, "int8_rule": s.int8_rule,
                              "int8_quality_min_agreement": s.int8_quality_min_agreement}
    if quality:
        parity["quality"] = dict(quality)
    for v in P:
        parity[v] = _diff(P[v], P_ref, _decide(policy, fleet, P[v], cost_sample, tasks, param), d_ref, tiers)
    rows = np.abs(P["fp32"] - P_ref).max(axis=1) if len(texts) else np.zeros(0)
    parity["fp32"]["rows_within_tolerance"] = float(np.mean(rows <= s.fp32_max_abs_diff)) if rows.size else 1.0
    if runtime.discontinuous:
        parity["fp32_min_row_share"] = s.fp32_min_row_share
    warnings: list[str] = []
    if "int8" not in P:
        parity["int8_ok"], parity["default_variant"] = None, "fp32"
        log.info("parity: fp32 max |Δp| %.2g, agreement %.2f%% (no int8 variant)", parity["fp32"]["max_abs_diff"],
                 100 * parity["fp32"]["decision_agreement"])
        return parity, warnings
    # dynamic int8 quantises activations per batch: also check one query per call, the common serving case
    P1 = np.concatenate([reorder(np.asarray(runtime.predict_proba([t], "int8"), float), runtime.label_order,
                                 fleet.names) for t in texts]) if texts else P["int8"]
    b1 = _diff(P1, P_ref, _decide(policy, fleet, P1, cost_sample, tasks, param), d_ref, tiers)
    parity["int8"].update({f"batch1_{k}": v for k, v in b1.items()})
    parity["int8"]["batch_size"] = s.batch_size
    worst = min(parity["int8"]["decision_agreement"], b1["decision_agreement"])
    judged = (quality or {}).get("val")
    rule = s.int8_rule
    if rule == "quality" and not judged:
        rule = "agreement"
        warnings.append("no validation split to judge int8's routing quality on: int8 was judged by the strict "
                        f"decision-agreement rule (≥ {s.int8_min_agreement:.0%})")
    floor = s.int8_min_agreement if rule == "agreement" else s.int8_quality_min_agreement
    parity["int8_rule_applied"], parity["int8_agreement_floor"] = rule, floor
    parity["int8_agreement_ok"] = bool(worst >= floor)
    parity["int8_quality_ok"] = bool(judged["ok"]) if judged else None
    parity["int8_ok"] = bool(parity["int8_agreement_ok"] and (rule == "agreement" or parity["int8_quality_ok"]))
    parity["default_variant"] = "int8" if s.prefer_variant == "int8" and parity["int8_ok"] else "fp32"
    if not parity["int8_agreement_ok"]:
        msg = (f"int8 decision agreement {worst:.2%} < {floor:.0%} of the trained classifier's "
               "decisions: the int8 graph is NOT the default; the bundle routes with fp32")
        warnings.append(msg)
        log.warning("!!! %s", msg)
    elif not parity["int8_ok"]:
        d = judged["delta"]
        msg = (f"int8 routes worse than fp32 on {judged['split']} ({100 * s.quality_ci:.0f} % paired-bootstrap "
               f"intervals: ΔAIQ {_interval(d['aiq'])}, Δaccuracy {_interval(d['accuracy'])}, Δcost "
               f"{_interval(d['cost_rel'], pct=True)}): the int8 graph is NOT the default; the bundle routes with fp32")
        warnings.append(msg)
        log.warning("!!! %s", msg)
    log.info("parity: fp32 max |Δp| %.2g, int8 max |Δp| %.2g, int8 agreement %.2f%% → default %s",
             parity["fp32"]["max_abs_diff"], parity["int8"]["max_abs_diff"],
             100 * parity["int8"]["decision_agreement"], parity["default_variant"])
    return parity, warnings


def _interval(d: Mapping[str, Any], pct: bool = False) -> str:
    f = (lambda x: f"{100 * x:+.2f}%") if pct else (lambda x: f"{x:+.4f}")
    return f"{f(d['diff'])} [{f(d['lo'])}, {f(d['hi'])}]"


def int8_quality_ok(delta: Mapping[str, Mapping[str, float]]) -> bool:
    """The quality half of `parity.int8_rule=quality`: int8 − fp32 paired-bootstrap intervals not entirely
    below 0 for `aiq` and `accuracy` (hi ≥ 0) and not entirely above 0 for `cost_rel` (lo ≤ 0); an undefined
    interval (NaN) fails."""
    vals = [delta["aiq"]["hi"], delta["accuracy"]["hi"], delta["cost_rel"]["lo"]]
    if not all(v is not None and np.isfinite(v) for v in vals):
        return False
    eps = 1e-12  # identical decisions give Δ = 0 up to float rounding
    return bool(vals[0] >= -eps and vals[1] >= -eps and vals[2] <= eps)


def quality_parity(predictors: Mapping[str, Predictor], policy: Policy, fleet, mats: Matrices, param: float,
                   cost_model: CostModel, counter: TokenCounter, *, split: str, train: Matrices | None = None,
                   val: Matrices | None = None, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Routing quality of int8 vs fp32 on the held-out `mats` (recorded outcomes): each variant's P̂ through the
    policy's sweep (AIQ, `replay_matrices` + `routing.replay.paired_bootstrap`) and at the operating `param`
    (accuracy, cost: `routing.replay.paired_point_bootstrap`), priced by the bundle's cost model. Δ = int8 − fp32;
    `ok` = `int8_quality_ok(delta)`."""
    routers = {v: PolicyRouter(predictors[v], policy, name=v) for v in VARIANTS}
    res = replay_matrices(mats, fleet, routers, train=train, val=val, seed=seed, cost_model=cost_model,
                          token_counter=counter)
    d_aiq = paired_bootstrap(res, "int8", ["fp32"], n_boot=n_boot, seed=seed, ci=ci)["fp32"]["aiq"]
    tasks = mats.queries["task"].astype(str).tolist()
    ch = {v: _decide(policy, fleet, res.results[v].predictions, res.ctx.expected_cost, tasks, param) for v in VARIANTS}
    pt = paired_point_bootstrap(mats.scores, mats.costs, ch["int8"], ch["fp32"], n_boot, ci, seed)
    out: dict[str, Any] = {
        "split": split, "n": int(mats.n), "param": encode_param(param),
        "decision_agreement": float(np.mean(ch["int8"] == ch["fp32"])),
        **{v: {"aiq": res.routers[v]["aiq"], "accuracy": pt["accuracy"][k], "cost_usd": pt["cost_rel"][k]}
           for v, k in (("int8", "a"), ("fp32", "b"))},
        "delta": {"aiq": {k: d_aiq[k] for k in ("diff", "lo", "hi")},
                  "accuracy": {k: pt["accuracy"][k] for k in ("diff", "lo", "hi")},
                  "cost_rel": {k: pt["cost_rel"][k] for k in ("diff", "lo", "hi")}},
    }
    out["ok"] = int8_quality_ok(out["delta"])
    return out


def quality_parities(runtime: BundleRuntime, fp32: Predictor, policy: Policy, fleet, splits: Splits, param: float,
                     cost_model: CostModel, counter: TokenCounter, s: ExportSettings) -> dict[str, Any] | None:
    """`quality_parity` on val (where `int8_rule=quality` decides) and test (reported only); None without int8."""
    if "int8" not in runtime.variants:
        return None
    preds = {"fp32": fp32, "int8": RuntimePredictor(runtime, "int8", fleet.names)}
    out: dict[str, Any] = {"n_boot": s.n_boot, "ci": s.quality_ci, "judged_on": "val",
                           "rule": "int8 − fp32 intervals: AIQ and accuracy not entirely < 0, cost not entirely > 0"}
    for role in ("val", "test"):
        mats = getattr(splits, role)
        if mats.n:
            out[role] = quality_parity(preds, policy, fleet, mats, param, cost_model, counter, split=s.splits[role],
                                       train=splits.train, val=splits.val, n_boot=s.n_boot, ci=s.quality_ci,
                                       seed=s.seed)
            q = out[role]
            log.info("quality parity on %s (%d): int8 − fp32 ΔAIQ %s, Δacc %s, Δcost %s → %s", q["split"], q["n"],
                     _interval(q["delta"]["aiq"]), _interval(q["delta"]["accuracy"]),
                     _interval(q["delta"]["cost_rel"], pct=True), "ok" if q["ok"] else "WORSE")
    return out


def replay_metrics(bundle: Bundle, dataset, reference_routers: Mapping[str, Any] | None,
                   s: ExportSettings) -> dict[str, Any]:
    """Step 7: the staged bundle (its fixed operating point and its sweep) replayed on test beside the reference
    routers: the decision code the server runs, priced by the bundle's own cost model."""
    res = replay_bundle(bundle, dataset, reference_routers, split=s.splits["test"], train_split=s.splits["train"],
                        val_split=s.splits["val"], seed=s.seed)
    return bundle_metrics(res, bundle)


def write_files(stage: Path, out_dir: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Step 8: metrics.json, the card, router.json with every file's sha256; then the staging dir moves into place."""
    (stage / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False))
    sizes = {p.name + ("/" if p.is_dir() else ""): sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))
                                                     if f.is_file()) / 1e6
             for p in sorted(stage.iterdir()) if p.name not in (ROUTER_FILE, "README.md", "metrics.json")}
    meta["bundle_id"] = bundle_id(file_hashes(stage), _clean(meta))  # before the card, which shows the id
    (stage / "README.md").write_text(ModelCard.from_bundle(meta, metrics, sizes).render())
    meta["sha256"] = file_hashes(stage)
    (stage / ROUTER_FILE).write_text(json.dumps(_clean(meta), indent=2, allow_nan=False))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage.rename(out_dir)


def reload_check(out_dir: Path, texts: list[str], expected: np.ndarray, s: ExportSettings):
    """The written bundle must load and reproduce the numbers measured (same texts, same batches: int8
    activations are quantised per batch, so only identical batches give identical int8 outputs)."""
    bundle = load_bundle(out_dir, intra_op_threads=s.intra_op_threads, batch_size=s.batch_size)
    again = bundle.predict_proba(texts).astype(float)
    if not np.allclose(again, expected, rtol=0, atol=1e-6):
        raise ExportError(f"{out_dir}: the re-loaded bundle predicts differently from the exported numbers "
                          f"(max |Δp| {np.abs(again - expected).max():.3g})")
    return bundle


def export_bundle(
    classifier_dir: str | Path,
    out_dir: str | Path,
    dataset,
    *,
    policy_name: str,
    policy_config: Mapping[str, Any],
    calibration: Mapping[str, Any] | None = None,
    default_operating_point: Mapping[str, Any] | None = None,
    governance: Mapping[str, Any] | None = None,
    stickiness: Mapping[str, Any] | None = None,
    reference_routers: Mapping[str, Any] | None = None,
    settings: ExportSettings | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    token_counter: TokenCounter | None = None,
    cascade: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `classifier_dir` (any saved classifier with `export_runtime`) to the bundle directory `out_dir`.

    `dataset`: the `RoutingDataset` it was trained on (train split → cost model; val → calibration;
    val + test → parity sample; test → replay metrics). `policy_config`: a Hydra node with `_target_`.
    `calibration`/`default_operating_point`: {target, value} (see kronaxis_lab.routing.calibration).
    `token_counter`: the prompt-token counter replay prices with (configs/tokenizer); None = the
    runtime's own tokenizer. `cascade`: a cascade node ({signal, pre_route, ...}, `export/cascade.py`) fitted on
    train's recorded replies and chosen on val, on top of the bundle's decision. Returns {"bundle_dir", "meta",
    "metrics", "bundle"}. `metadata`: {by, field, smoothing} — blend a request tag's per-tag rates into P̂
    (`export/metadata.py`); the operating point is then calibrated on the blended val P̂.
    """
    s = settings or ExportSettings()
    classifier_dir, out_dir = Path(classifier_dir), Path(out_dir)
    check_exportable(classifier_class(classifier_dir), str(classifier_dir / META_FILE))
    if out_dir.exists() and not s.overwrite:
        raise ExportError(f"{out_dir} already exists (set overwrite=true to replace it)")
    fleet = dataset.fleet
    clf, labels = load_exportable(classifier_dir, fleet)
    policy = instantiate_policy(dict(policy_config), f"policy '{policy_name}'")
    splits = Splits(*(dataset.matrices(s.splits[k]) for k in ("train", "val", "test")))
    if splits.test.n == 0:
        raise ExportError(f"{dataset.name}: split '{s.splits['test']}' is empty: the bundle's metrics need "
                          "held-out queries")

    stage = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    options = RuntimeOptions(intra_op_threads=s.intra_op_threads, batch_size=s.batch_size, show_progress=True)
    try:
        node = write_runtime(clf, stage, splits.val, labels, s, splits.train)
        runtime = load_runtime(stage, node, options)
        cost_model, counter, extra_files = fit_costs(splits.train, splits.val, fleet, stage, runtime, token_counter)

        texts, tasks = parity_sample(splits.val, splits.test, s.parity_n, s.seed)
        n_sample = len(texts)
        lengths = [int(n["max_length"]) for _, _, n in walk_nodes(node) if n.get("max_length")]
        edge = edge_cases(texts, max(lengths, default=256))
        texts, tasks = texts + edge, tasks + ["unknown"] * len(edge)
        P_ref, P = parity_probabilities(clf, runtime, texts, list(fleet.names), s)

        ctx = ReplayContext(test=splits.test, fleet=fleet, train=splits.train, val=splits.val, seed=s.seed,
                            cost_model=cost_model, token_counter=counter)
        router = PolicyRouter(RuntimePredictor(runtime, "fp32", fleet.names), policy, name=f"bundle+{policy_name}")
        tagged = None
        if metadata:  # the operating point of tagged traffic: calibrated on the blended P̂
            tagged, blend = fit_metadata(router.predictor, ctx, metadata)
            router = PolicyRouter(blend, policy, name=router.name)
        op, source_kind, calib_out, warnings = operating_parameter(
            router, ctx, policy, splits, fleet, calibration, default_operating_point, s, dataset.name)
        param = float(op["param"])

        quality = quality_parities(runtime, router.predictor, policy, fleet, splits, param, cost_model, counter, s)
        cost_sample = cost_model.expected(counter.count(texts), texts=texts)
        parity, parity_warnings = parity_decisions(runtime, policy, fleet, texts, tasks, cost_sample, P_ref, P,
                                                   param, n_sample, len(edge), s, quality)
        default_variant = parity["default_variant"]
        warnings += parity_warnings

        pconf = dict(policy_config)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "kind": KIND,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "label_order": labels, "model_names": list(fleet.names), "fleet": fleet.to_dict(),
            "premium": fleet.premium, "classifier": node, "files": extra_files,
            "cost_model": cost_model.to_dict(),
            "expected_output_tokens": cost_model.expected_output_tokens(fleet.names),
            "default_variant": default_variant,
            "policy": {"name": policy_name, "config": pconf, "param": encode_param(param),
                       "param_name": policy.name, "param_source": source_kind,
                       "operating_point": {k: (encode_param(v) if k == "param" else v) for k, v in op.items()}},
            "calibration": calib_out,
            "governance": governance_node(governance, fleet),
            "stickiness": dict(stickiness) if stickiness else None,
            "parity": parity,
            "warnings": warnings,
            "source": dict(source or {}) | {"classifier_dir": str(classifier_dir.resolve()),
                                            "classifier_class": type(clf).__name__,
                                            "base_model": _base_model(clf), "dataset": dataset.name},
        }
        if meta["governance"] is not None:
            instantiate_node(meta["governance"], "governance")  # fail now, not when the server starts
        if tagged is not None:
            meta["metadata"] = tagged.to_node()
        if cascade:
            staged = Bundle(stage, _clean(meta), intra_op_threads=s.intra_op_threads, batch_size=s.batch_size)
            fitted, lam = fit_cascade(staged, splits.train, splits.val, cascade)
            meta["cascade"] = save_cascade(fitted, stage)
            if fitted.pre_route:  # the hybrid's λ was chosen jointly with τ on val (cascade.fit holds its numbers)
                meta["policy"]["param"] = encode_param(lam)
                meta["policy"]["param_source"] = "cascade"
                meta["policy"]["pre_cascade_operating_point"] = meta["policy"].pop("operating_point")
                meta["policy"]["operating_point"] = None

        metrics: dict[str, Any] = {"train": dict(train_metrics or {}), "parity": parity}
        if s.replay:  # the staged bundle itself: what kronaxis-replay bundle=<dir> and the server run
            staged = Bundle(stage, _clean(meta), intra_op_threads=s.intra_op_threads, batch_size=s.batch_size)
            metrics.update(replay_metrics(staged, dataset, reference_routers, s))
        write_files(stage, out_dir, meta, metrics)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

    bundle = reload_check(out_dir, texts, P[default_variant], s)
    log.info("bundle written to %s (id %s, %s, default %s)", out_dir, meta["bundle_id"], type(runtime).__name__,
             default_variant)
    return {"bundle_dir": str(out_dir), "meta": meta, "metrics": metrics, "bundle": bundle}


def _base_model(clf) -> str | None:
    """The pretrained encoder a classifier starts from (None for TF-IDF, rules, composites)."""
    if getattr(clf, "base_model", None):
        return str(clf.base_model)
    emb = getattr(clf, "embedding", None)
    model = getattr(emb, "model", None) or (emb.get("model") if isinstance(emb, Mapping) else None)
    return str(model) if model else None


def _clean(o: Any, key: str | None = None) -> Any:
    """JSON-ready copy: numpy scalars/arrays → Python; non-finite floats → "inf"/"-inf" for parameters
    (an operating λ can be ∞) and null elsewhere (strict JSON has neither)."""
    if isinstance(o, Mapping):
        return {str(k): _clean(v, str(k)) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_clean(v, key) for v in (o.tolist() if isinstance(o, np.ndarray) else o)]
    if isinstance(o, (np.integer, np.bool_)):
        return o.item()
    if isinstance(o, (float, np.floating)):
        v = float(o)
        if np.isfinite(v):
            return v
        return encode_param(v) if key in ("param", "params") and not np.isnan(v) else None
    return o
