"""int8 variants of a tier-predictor bundle side by side: decision agreement, routing quality (val decides, test
reports) and batch-1 latency, fp32 vs each int8 recipe, in one run.

    .venv/bin/python benchmarks/quantisation.py --run-dir /tmp/q/train --out /tmp/q/bench \
        [--variants dynamic,static_minmax,static_percentile,static_minmax_keep] [--n-latency 300] [--n-boot 1000] \
        [--json out.json] [--write benchmarks/quantisation.md]

1. One export of the trained classifier (`kronaxis_lab.pipelines.export.run`, configs/export.yaml with
   `metrics.replay=false`): the fp32 graph, its operating point (on val), cost model, policy.
2. For each variant (VARIANTS below): the bundle's int8 graph is rebuilt with the exporter's own step
   `exporter.quantize_graphs` (static: calibrated on a seeded sample of *train* queries), then judged with the
   exporter's own steps: `exporter.quality_parities` (int8 − fp32 ΔAIQ, Δaccuracy and Δcost at the operating
   point on val and test, paired bootstrap) and `exporter.parity_decisions` (decision agreement with the trained
   classifier on the val+test parity sample, in batches and one query per call; the verdict of the `agreement`
   rule and of the `quality` rule).
3. Latency: one onnxruntime session per graph (1 intra-op and 1 inter-op thread, ORT_ENABLE_ALL), the same
   `--n-latency` pre-tokenised held-out queries one per call; graphs take turns query by query (round robin), so
   load on the shared machine hits them alike. Reported: median wall time and median CPU time of the calling
   thread (`time.thread_time`, what the call costs on an idle core) per call, the graph only (no tokenizer).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronaxis_lab.classifiers.base import load_classifier  # noqa: E402
from kronaxis_lab.export.bundle import load_bundle  # noqa: E402
from kronaxis_lab.export.exporter import (  # noqa: E402
    ExportSettings,
    RuntimePredictor,
    Splits,
    edge_cases,
    parity_decisions,
    parity_sample,
    quality_parities,
    quantize_graphs,
)
from kronaxis_lab.export.runtimes import BundleTokenizer, RuntimeOptions, load_runtime, reorder  # noqa: E402
from kronaxis_lab.export.schema import walk_nodes  # noqa: E402
from kronaxis_lab.pipelines.common import load_dataset  # noqa: E402
from kronaxis_lab.pipelines.export import run as export_run  # noqa: E402

#: name → ExportSettings overrides (fp32-kept ops: the head, the pooler and the FFN output projections)
KEEP = ("classifier", "pooler", "layer\\.[0-9]+/output/dense/MatMul")
VARIANTS: dict[str, dict[str, Any]] = {
    "dynamic": {"quantize_method": "dynamic"},
    "dynamic_keep": {"quantize_method": "dynamic", "quantize_exclude_nodes": KEEP},
    "static_minmax": {"quantize_method": "static", "quantize_calibrate_method": "MinMax"},
    "static_percentile": {"quantize_method": "static", "quantize_calibrate_method": "Percentile"},
    "static_entropy": {"quantize_method": "static", "quantize_calibrate_method": "Entropy",
                       "quantize_n_calibration": 128},
    "static_minmax_keep": {"quantize_method": "static", "quantize_calibrate_method": "MinMax",
                           "quantize_exclude_nodes": KEEP},
}


def compose(overrides: list[str], out: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="export", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def graph_node(node: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return next((rel, n) for _, rel, n in walk_nodes(node) if (n.get("files") or {}).get("onnx_fp32"))


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], feeds: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    sess = {k: session(p) for k, p in paths.items()}
    out = {k: s.get_outputs()[0].name for k, s in sess.items()}
    for k, s in sess.items():  # warm-up
        for f in feeds[:20]:
            s.run([out[k]], f)
    wall: dict[str, list[float]] = {k: [] for k in sess}
    cpu: dict[str, list[float]] = {k: [] for k in sess}
    names = list(sess)
    for i, f in enumerate(feeds):
        for k in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
            w0, c0 = time.perf_counter(), time.thread_time()
            sess[k].run([out[k]], f)
            cpu[k].append(time.thread_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return {k: {"median_ms": 1e3 * float(np.median(wall[k])), "p90_ms": 1e3 * float(np.quantile(wall[k], 0.9)),
                "cpu_median_ms": 1e3 * float(np.median(cpu[k])), "size_mb": paths[k].stat().st_size / 1e6}
            for k in names}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="dynamic,static_minmax,static_percentile,static_minmax_keep")
    ap.add_argument("--n-latency", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--parity-n", type=int, default=1000)
    ap.add_argument("--json")
    ap.add_argument("--write")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()
    t0 = time.time()

    cfg = compose([f"run_dir={args.run_dir}", "metrics.replay=false", f"metrics.n_boot={args.n_boot}",
                   f"parity.n={args.parity_n}", "onnx.quantize.method=dynamic"], out / "base")
    base = export_run(cfg)
    meta = base["meta"]
    bundle = load_bundle(base["bundle_dir"])
    clf_dir = Path(meta["source"]["classifier_dir"])
    info = json.loads((clf_dir / "train_info.json").read_text())
    dcfg = compose([f"run_dir={args.run_dir}", f"dataset={info['dataset']}"], out / "ds")
    ds = load_dataset(dcfg)
    fleet = ds.fleet
    base_s = ExportSettings.from_config(cfg)
    splits = Splits(*(ds.matrices(base_s.splits[k]) for k in ("train", "val", "test")))
    policy, param = bundle.policy, float(bundle.param)
    cost_model, counter = bundle.cost_model, bundle.cost_counter
    clf = load_classifier(clf_dir)
    clf.show_progress = False
    texts, tasks = parity_sample(splits.val, splits.test, base_s.parity_n, base_s.seed)
    n_sample = len(texts)
    rel, gnode = graph_node(meta["classifier"])
    edge = edge_cases(texts, int(gnode["max_length"]))
    texts, tasks = texts + edge, tasks + ["unknown"] * len(edge)
    P_ref = reorder(np.asarray(clf.predict_proba(texts), float), list(clf.model_names_), list(fleet.names))
    cost_sample = cost_model.expected(counter.count(texts), texts=texts)
    options = RuntimeOptions(intra_op_threads=None, batch_size=base_s.batch_size, show_progress=False)
    print(f"base export + reference in {time.time() - t0:.0f} s; param {param:.4g}", flush=True)

    fp32_pred, P_fp32 = None, None
    rows: dict[str, Any] = {}
    graphs: dict[str, Path] = {"fp32": Path(base["bundle_dir"]) / rel / gnode["files"]["onnx_fp32"]}
    for name in args.variants.split(","):
        t1 = time.time()
        s = dataclasses.replace(base_s, **VARIANTS[name])
        d = out / name
        shutil.copytree(base["bundle_dir"], d)
        node = copy.deepcopy(meta["classifier"])
        calib = splits.train.queries.sample(n=min(splits.train.n, s.quantize_n_calibration), random_state=s.seed)
        quantize_graphs(node, d, s, calib["text"].astype(str).tolist())  # as exporter.write_runtime samples
        runtime = load_runtime(d, node, options)
        fp32_pred = fp32_pred or RuntimePredictor(runtime, "fp32", fleet.names)  # same fp32 graph in every copy
        quality = quality_parities(runtime, fp32_pred, policy, fleet, splits, param, cost_model, counter, s)
        P_fp32 = P_fp32 if P_fp32 is not None else reorder(np.asarray(runtime.predict_proba(texts, "fp32"), float),
                                                           runtime.label_order, fleet.names)
        P = {"fp32": P_fp32,
             "int8": reorder(np.asarray(runtime.predict_proba(texts, "int8"), float), runtime.label_order, fleet.names)}
        p, _ = parity_decisions(runtime, policy, fleet, texts, tasks, cost_sample, P_ref, P, param, n_sample,
                                len(edge), dataclasses.replace(s, int8_rule="quality"), quality)
        worst = min(p["int8"]["decision_agreement"], p["int8"]["batch1_decision_agreement"])
        rows[name] = {"settings": VARIANTS[name], "int8": p["int8"], "quality": quality,
                      "agreement_rule_ok": bool(worst >= s.int8_min_agreement), "quality_rule_ok": p["int8_ok"],
                      "quantize": graph_node(node)[1]["onnx"]["int8"], "seconds": time.time() - t1}
        graphs[name] = d / rel / graph_node(node)[1]["files"]["onnx_int8"]
        if args.json:  # partial results as each variant finishes
            Path(args.json).write_text(json.dumps({"variants": rows}, indent=2, default=float))
        print(f"{name}: agreement {p['int8']['decision_agreement']:.4f} / batch1 "
              f"{p['int8']['batch1_decision_agreement']:.4f}, val ok {quality['val']['ok']}, "
              f"{time.time() - t1:.0f} s", flush=True)

    tok = BundleTokenizer.from_node(Path(base["bundle_dir"]) / rel, gnode)
    lat_texts = splits.test.queries.sample(n=min(args.n_latency, splits.test.n), random_state=1)["text"]
    feeds = [tok.encode([t]) for t in lat_texts.astype(str)]
    load1 = os.getloadavg()
    lat = latency(graphs, feeds)
    load2 = os.getloadavg()
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()},
           "command": " ".join(["benchmarks/quantisation.py", *(argv if argv is not None else sys.argv[1:])]),
           "run_dir": args.run_dir, "param": param, "policy": meta["policy"]["name"],
           "n_val": splits.val.n, "n_test": splits.test.n, "n_parity": n_sample, "n_latency": len(feeds),
           "loadavg": {"start": load0, "before_latency": load1, "after_latency": load2},
           "latency": lat, "variants": rows, "seconds": time.time() - t0}
    table = markdown(res)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=float))
    if args.write:
        Path(args.write).write_text(table)
    return res


def markdown(res: dict[str, Any]) -> str:
    def iv(d, pct=False):
        f = (lambda x: f"{100 * x:+.2f}%") if pct else (lambda x: f"{x:+.4f}")
        return f"{f(d['diff'])} [{f(d['lo'])}, {f(d['hi'])}]"

    lat = res["latency"]
    lines = ["| variant | agree (batch) | agree (batch-1) | split | ΔAIQ [95% CI] | Δacc [95% CI] | Δcost [95% CI] "
             "| quality ok | p50 ms (CPU ms) | MB |", "|---|---:|---:|---|---|---|---|---|---:|---:|",
             f"| fp32 | — | — | — | — | — | — | — | {lat['fp32']['median_ms']:.2f} ({lat['fp32']['cpu_median_ms']:.2f}) "
             f"| {lat['fp32']['size_mb']:.1f} |"]
    for name, r in res["variants"].items():
        for role in ("val", "test"):
            q = r["quality"][role]
            d = q["delta"]
            head = (f"| {name} | {r['int8']['decision_agreement']:.2%} | {r['int8']['batch1_decision_agreement']:.2%}"
                    if role == "val" else "| | |")
            tail = (f"{lat[name]['median_ms']:.2f} ({lat[name]['cpu_median_ms']:.2f}) | {lat[name]['size_mb']:.1f}"
                    if role == "val" else " | ")
            lines.append(f"{head} | {role} (n={q['n']}) | {iv(d['aiq'])} | {iv(d['accuracy'], True)} | "
                         f"{iv(d['cost_rel'], True)} | {'yes' if q['ok'] else 'NO'} | {tail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
