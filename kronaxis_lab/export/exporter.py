"""Build a bundle from a trained classifier: ONNX (+ int8), tokenizer, policy, parity, metrics, model card.

    export_bundle(classifier_dir, out_dir, dataset, policy_name="wtp", policy_config={...}, ...)

Steps (each a function below, each checked, so a bundle that exists is a bundle that works):
1. `load_exportable`: refuse non-exportable classifiers (before loading any weights), load, check the fleet;
2. `write_graphs`: export the graph (fp32), quantise it (int8), save the tokenizer;
3. `fit_costs`: fit the one decision-time cost model (`kronaxis_lab.routing.costs`) on the train split, with
   the prompt-token counter replay uses (bundled when the classifier's tokenizer counts differently);
4. `parity_probabilities`: P̂ of ONNX fp32 / int8 vs the PyTorch classifier on held-out queries; fp32 must
   match (max |Δp| ≤ tolerance, else the export fails);
5. `operating_parameter`: the `calibration` target on val (calibrate_router), else the default operating
   point (cheapest point reaching 95 % of premium accuracy, on val);
6. `parity_decisions`: int8 must agree on ≥ `int8_min_agreement` of the routing decisions, else the bundle
   defaults to fp32 and says so in router.json and the card;
7. `replay_metrics`: replay the exported router on the test split beside the reference routers (metrics.json),
   priced by the bundle's own cost model;
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
    BundleTokenizer,
    OnnxClassifier,
    bundle_id,
    encode_param,
    file_hashes,
    instantiate_node,
    instantiate_policy,
    load_bundle,
)
from kronaxis_lab.export.card import ModelCard
from kronaxis_lab.export.onnx_export import ExportError, check_exportable, export_onnx, quantize_int8
from kronaxis_lab.routing.calibration import calibrate_router
from kronaxis_lab.routing.costs import CostModel, TokenCounter
from kronaxis_lab.routing.operating_point import PREMIUM_ACCURACY_SHARE, operating_point
from kronaxis_lab.routing.policies import Policy
from kronaxis_lab.routing.replay import replay
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext
from kronaxis_lab.serving.governance import endpoints_from_fleet

log = logging.getLogger("kronaxis_lab.export")

VARIANTS = ("fp32", "int8")
FILES = {"onnx_fp32": "model.onnx", "onnx_int8": "model.int8.onnx", "tokenizer": "tokenizer"}
COST_TOKENIZER = "cost_tokenizer"


@dataclass
class ExportSettings:
    """Knobs of `export_bundle` (configs/export.yaml); validated here so a bad value fails before any work."""

    opset: int = 17
    max_length: int | None = None  # None = the classifier's
    quantize_per_channel: bool = True
    quantize_reduce_range: bool = False
    quantize_exclude_nodes: tuple[str, ...] = ()
    parity_n: int = 1000
    fp32_max_abs_diff: float = 1e-4
    int8_min_agreement: float = 0.99
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
        if not 0 <= self.int8_min_agreement <= 1:
            raise ValueError(f"parity.int8_min_agreement must be in [0, 1], got {self.int8_min_agreement}")
        if self.prefer_variant not in VARIANTS:
            raise ValueError(f"parity.prefer_variant must be one of {VARIANTS}, got {self.prefer_variant!r}")
        if self.batch_size < 1:
            raise ValueError(f"runtime.batch_size must be ≥ 1, got {self.batch_size}")
        missing = {"train", "val", "test"} - set(self.splits)
        if missing:
            raise ValueError(f"splits must name the train, val and test splits (missing {sorted(missing)})")


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


class OnnxPredictor(Predictor):
    """Replay `Predictor` over the bundle runtime (one variant), cached per query set: the calibration, the
    sweep and the fixed-point router all reuse one ONNX pass."""

    def __init__(self, runtime: OnnxClassifier, variant: str):
        self.runtime, self.variant = runtime, variant
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        key = tuple(mats.queries["query_id"].astype(str))
        if key not in self._cache:
            texts = mats.queries["text"].astype(str).tolist()
            self._cache[key] = self.runtime.predict_proba(texts, self.variant).astype(float)
        return self._cache[key]


def _decide(policy, fleet, P: np.ndarray, cost: np.ndarray, tasks: Sequence[str], param: float) -> np.ndarray:
    policy.bind(fleet, pd.DataFrame({"task": list(tasks)}))
    return np.asarray(policy.choose(P, cost, [param])[0], dtype=np.int64)


def _edge_cases(texts: Sequence[str], max_length: int) -> list[str]:
    """Inputs that exercise the tokenizer path: empty, far over max_length (truncation), non-ASCII."""
    base = next((t for t in texts if t.strip()), "route this query")
    long = " ".join([base] * (4 * max_length // max(1, len(base.split())) + 2))
    return ["", long, "Ünïcödé — 数学の問題を解いてください 🚀 " + base]


def _parity_sample(val, test, n: int, seed: int) -> tuple[list[str], list[str]]:
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


def load_exportable(classifier_dir: Path, fleet, s: ExportSettings):
    """Step 1: the saved classifier, checked against the fleet, truncating like the bundle will."""
    check_exportable(classifier_class(classifier_dir), str(classifier_dir / META_FILE))
    clf = load_classifier(classifier_dir)
    clf.show_progress = False
    labels = list(clf.model_names_)
    if sorted(labels) != sorted(fleet.names):
        raise ExportError(f"{classifier_dir} predicts {labels}, but the dataset's fleet is {fleet.names}: "
                          "export with the dataset the classifier was trained on")
    max_length = int(s.max_length or clf.max_length)
    max_pos = getattr(clf.model_.config, "max_position_embeddings", None)
    if max_pos and max_length > max_pos:
        raise ExportError(f"max_length {max_length} exceeds the model's {max_pos} positions")
    clf.max_length = max_length  # the PyTorch reference of the parity check truncates like the bundle
    return clf, labels, max_length


def write_graphs(clf, stage: Path, val: Matrices, max_length: int, s: ExportSettings) -> tuple[dict, dict]:
    """Step 2: tokenizer, fp32 graph, int8 graph → (onnx info, tokenizer meta)."""
    clf.tokenizer_.save_pretrained(stage / FILES["tokenizer"])
    sample = [t for t in val.queries["text"].astype(str).head(2)] or None
    onnx_info = export_onnx(clf, stage / FILES["onnx_fp32"], opset=s.opset, sample_texts=sample, max_length=max_length)
    onnx_info["int8"] = quantize_int8(stage / FILES["onnx_fp32"], stage / FILES["onnx_int8"],
                                      s.quantize_per_channel, s.quantize_reduce_range, s.quantize_exclude_nodes)
    tok = clf.tokenizer_
    tok_meta = {"truncation_side": getattr(tok, "truncation_side", "right"), "pad_token": tok.pad_token,
                "pad_id": int(tok.pad_token_id or 0), "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0),
                "class": type(tok).__name__}
    return onnx_info, tok_meta


def fit_costs(train: Matrices, val: Matrices, fleet, stage: Path, max_length: int, tok_meta: dict, onnx_info: dict,
              token_counter: TokenCounter | None) -> tuple[CostModel, TokenCounter, dict[str, str]]:
    """Step 3: the cost model replay uses, fitted on train → (cost model, its counter, extra bundle files).

    The counter is `token_counter` (what replay counts with); when the classifier's tokenizer counts the
    train prompts differently, the counter's tokenizer is bundled too, so the server counts the same."""
    own = BundleTokenizer(stage / FILES["tokenizer"], max_length, tok_meta["truncation_side"], tok_meta["pad_token"],
                          tok_meta["pad_id"], tok_meta["pad_type_id"], onnx_info["inputs"])
    texts = train.queries["text"].astype(str).tolist()
    counter, extra = own, {}
    name = None
    if token_counter is not None:
        name = str(getattr(token_counter, "name", type(token_counter).__name__))
        if not np.array_equal(own.count(texts), np.asarray(token_counter.count(texts))):
            token_counter.tokenizer.save_pretrained(stage / COST_TOKENIZER)
            counter, extra = BundleTokenizer(stage / COST_TOKENIZER, 2), {"cost_tokenizer": COST_TOKENIZER}
            log.info("the classifier's tokenizer counts prompts unlike %s: bundling it as %s/", name, COST_TOKENIZER)
    val_texts = val.queries["text"].astype(str).tolist()
    cost_model = CostModel.fit(train, fleet, counter.count(texts), tokenizer=name, val=val,
                               val_token_counts=counter.count(val_texts) if val.n else None)
    return cost_model, counter, extra


def parity_probabilities(clf, runtime: OnnxClassifier, texts: list[str], cols: list[int],
                         s: ExportSettings) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 4: P̂ of PyTorch and of each ONNX variant; the fp32 graph must reproduce PyTorch."""
    P_torch = np.asarray(clf.predict_proba(texts), float)[:, cols]
    P = {v: runtime.predict_proba(texts, v).astype(float) for v in VARIANTS}
    fp32_diff = float(np.abs(P["fp32"] - P_torch).max())
    if fp32_diff > s.fp32_max_abs_diff:
        raise ExportError(f"the fp32 ONNX graph does not reproduce the classifier: max |Δp| = {fp32_diff:.3g} > "
                          f"{s.fp32_max_abs_diff:g} on {len(texts)} queries (parity.fp32_max_abs_diff)")
    return P_torch, P


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


def parity_decisions(runtime: OnnxClassifier, policy: Policy, fleet, texts: list[str], tasks: list[str],
                     cost_sample: np.ndarray, P_torch: np.ndarray, P: dict[str, np.ndarray], param: float,
                     n_sample: int, n_edge: int, s: ExportSettings) -> tuple[dict[str, Any], list[str]]:
    """Step 6: decision agreement of each variant with PyTorch (int8 also one query per call) → (parity, warnings)."""
    d_torch = _decide(policy, fleet, P_torch, cost_sample, tasks, param)
    tiers = fleet.tiers
    parity: dict[str, Any] = {"n": n_sample, "n_edge_cases": n_edge, "sample": f"{s.splits['val']}+{s.splits['test']}",
                              "seed": s.seed, "fp32_max_abs_diff_allowed": s.fp32_max_abs_diff,
                              "int8_min_agreement": s.int8_min_agreement}
    for v in VARIANTS:
        parity[v] = _diff(P[v], P_torch, _decide(policy, fleet, P[v], cost_sample, tasks, param), d_torch, tiers)
    # int8 activations are quantised per batch: also check one query per call, the common serving case
    P1 = np.concatenate([runtime.predict_proba([t], "int8") for t in texts]).astype(float)
    b1 = _diff(P1, P_torch, _decide(policy, fleet, P1, cost_sample, tasks, param), d_torch, tiers)
    parity["int8"].update({f"batch1_{k}": v for k, v in b1.items()})
    parity["int8"]["batch_size"] = s.batch_size
    worst = min(parity["int8"]["decision_agreement"], b1["decision_agreement"])
    parity["int8_ok"] = bool(worst >= s.int8_min_agreement)
    parity["default_variant"] = "int8" if s.prefer_variant == "int8" and parity["int8_ok"] else "fp32"
    warnings = []
    if not parity["int8_ok"]:
        msg = (f"int8 decision agreement {worst:.2%} < {s.int8_min_agreement:.0%} of the PyTorch classifier's "
               "decisions: the int8 graph is NOT the default; the bundle routes with fp32")
        warnings.append(msg)
        log.warning("!!! %s", msg)
    log.info("parity: fp32 max |Δp| %.2g, int8 max |Δp| %.2g, int8 agreement %.2f%% → default %s",
             parity["fp32"]["max_abs_diff"], parity["int8"]["max_abs_diff"],
             100 * parity["int8"]["decision_agreement"], parity["default_variant"])
    return parity, warnings


def replay_metrics(dataset, pred: Predictor, policy_name: str, pconf: dict, param: float, cost_model: CostModel,
                   counter: TokenCounter, reference_routers: Mapping[str, Any] | None, variant: str,
                   s: ExportSettings) -> dict[str, Any]:
    """Step 7: the exported router (its sweep and its fixed operating point) replayed on test, priced by the
    bundle's own cost model."""
    fixed = instantiate_policy(pconf, f"policy '{policy_name}'")
    fixed.params = np.asarray([param])
    sweep_name, fixed_name = f"bundle+{policy_name}", f"bundle:{policy_name}@{param:.4g}"
    routers = dict(reference_routers or {})
    routers[sweep_name] = PolicyRouter(pred, instantiate_policy(pconf, policy_name), name=sweep_name)
    routers[fixed_name] = PolicyRouter(pred, fixed, name=fixed_name)
    res = replay(dataset, routers, split=s.splits["test"], seed=s.seed, train_split=s.splits["train"],
                 val_split=s.splits["val"], token_counter=counter, cost_model=cost_model)
    return {"bundle_router": fixed_name, "bundle_sweep": sweep_name, "replay": {
        "dataset": res.dataset, "split": res.split, "n_queries": res.n_queries, "premium": res.premium,
        "cheapest": res.cheapest, "variant": variant, "routers": res.routers}}


def write_files(stage: Path, out_dir: Path, meta: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Step 8: metrics.json, the card, router.json with every file's sha256; then the staging dir moves into place."""
    (stage / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False))
    sizes = {rel: (stage / rel).stat().st_size / 1e6 for rel in (FILES["onnx_fp32"], FILES["onnx_int8"])}
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
) -> dict[str, Any]:
    """Export `classifier_dir` (a saved TierPredictor/StudentTierPredictor) to the bundle directory `out_dir`.

    `dataset`: the `RoutingDataset` it was trained on (train split → cost model; val → calibration;
    val + test → parity sample; test → replay metrics). `policy_config`: a Hydra node with `_target_`.
    `calibration`/`default_operating_point`: {target, value} (see kronaxis_lab.routing.calibration).
    `token_counter`: the prompt-token counter replay prices with (configs/tokenizer); None = the
    classifier's tokenizer. Returns {"bundle_dir", "meta", "metrics", "bundle"}.
    """
    s = settings or ExportSettings()
    classifier_dir, out_dir = Path(classifier_dir), Path(out_dir)
    check_exportable(classifier_class(classifier_dir), str(classifier_dir / META_FILE))
    if out_dir.exists() and not s.overwrite:
        raise ExportError(f"{out_dir} already exists (set overwrite=true to replace it)")
    fleet = dataset.fleet
    clf, labels, max_length = load_exportable(classifier_dir, fleet, s)
    policy = instantiate_policy(dict(policy_config), f"policy '{policy_name}'")
    splits = Splits(*(dataset.matrices(s.splits[k]) for k in ("train", "val", "test")))
    if splits.test.n == 0:
        raise ExportError(f"{dataset.name}: split '{s.splits['test']}' is empty: the bundle's metrics need "
                          "held-out queries")

    stage = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        onnx_info, tok_meta = write_graphs(clf, stage, splits.val, max_length, s)
        cost_model, counter, extra_files = fit_costs(splits.train, splits.val, fleet, stage, max_length, tok_meta, onnx_info,
                                                     token_counter)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "kind": KIND,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "label_order": labels, "head": clf.head_, "tier_order": [labels[k] for k in clf.tier_order_],
            "max_length": max_length, "model_names": list(fleet.names), "fleet": fleet.to_dict(),
            "premium": fleet.premium, "tokenizer": tok_meta, "onnx": onnx_info, "files": FILES | extra_files,
            "cost_model": cost_model.to_dict(),
            "expected_output_tokens": cost_model.expected_output_tokens(fleet.names),
            "default_variant": "fp32",
        }
        runtime = OnnxClassifier(stage, meta, intra_op_threads=s.intra_op_threads, batch_size=s.batch_size,
                                 output_order=fleet.names)
        runtime.show_progress = True
        cols = [labels.index(n) for n in fleet.names]

        texts, tasks = _parity_sample(splits.val, splits.test, s.parity_n, s.seed)
        n_sample = len(texts)
        edge = _edge_cases(texts, max_length)
        texts, tasks = texts + edge, tasks + ["unknown"] * len(edge)
        P_torch, P = parity_probabilities(clf, runtime, texts, cols, s)

        pred_fp32 = OnnxPredictor(runtime, "fp32")
        ctx = ReplayContext(test=splits.test, fleet=fleet, train=splits.train, val=splits.val, seed=s.seed,
                            cost_model=cost_model, token_counter=counter)
        router = PolicyRouter(pred_fp32, policy, name=f"bundle+{policy_name}")
        op, source_kind, calib_out, warnings = operating_parameter(
            router, ctx, policy, splits, fleet, calibration, default_operating_point, s, dataset.name)
        param = float(op["param"])

        cost_sample = cost_model.expected(counter.count(texts), texts=texts)
        parity, parity_warnings = parity_decisions(runtime, policy, fleet, texts, tasks, cost_sample, P_torch, P,
                                                   param, n_sample, len(edge), s)
        default_variant = meta["default_variant"] = parity["default_variant"]
        warnings += parity_warnings

        pconf = dict(policy_config)
        meta["policy"] = {"name": policy_name, "config": pconf, "param": encode_param(param),
                          "param_name": policy.name, "param_source": source_kind,
                          "operating_point": {k: (encode_param(v) if k == "param" else v) for k, v in op.items()}}
        meta["calibration"] = calib_out
        meta["governance"] = governance_node(governance, fleet)
        meta["stickiness"] = dict(stickiness) if stickiness else None
        meta["parity"] = parity
        meta["warnings"] = warnings
        meta["source"] = dict(source or {}) | {"classifier_dir": str(classifier_dir.resolve()),
                                                "classifier_class": type(clf).__name__,
                                                "base_model": getattr(clf, "base_model", None),
                                                "dataset": dataset.name}
        if meta["governance"] is not None:
            instantiate_node(meta["governance"], "governance")  # fail now, not when the server starts

        metrics: dict[str, Any] = {"train": dict(train_metrics or {}), "parity": parity}
        if s.replay:
            pred = pred_fp32 if default_variant == "fp32" else OnnxPredictor(runtime, default_variant)
            metrics.update(replay_metrics(dataset, pred, policy_name, pconf, param, cost_model, counter,
                                          reference_routers, default_variant, s))
        write_files(stage, out_dir, meta, metrics)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

    bundle = reload_check(out_dir, texts, P[default_variant], s)
    log.info("bundle written to %s (id %s, default %s)", out_dir, meta["bundle_id"], default_variant)
    return {"bundle_dir": str(out_dir), "meta": meta, "metrics": metrics, "bundle": bundle}


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
