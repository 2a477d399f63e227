"""Routing-decision latency at batch 1: the exported bundle (ONNX int8 / fp32) vs PyTorch vs a bert-base router.

    .venv/bin/python benchmarks/routing_latency.py --bundle <kronaxis-export out>/bundle [--n 500] [--threads 1]
        [--queries ../shared/data/llmrouter/queries_train.jsonl] [--layers 3] [--no-bert-base] [--json out.json]

One *decision* = text → tokenize → encoder → probabilities (logits_to_proba) → policy decision (the bundle's
policy at its operating parameter, with the text's expected cost). Pipelines, all on the same queries:

- bundle int8 / bundle fp32: `Bundle` internals, timed per stage (tokenize, ONNX run, post-process + decide);
  plus `Bundle.route([text])`, the public call, end to end;
- torch: the same classifier in PyTorch (`TierPredictor.predict_proba`, HF tokenizer) + the same decide;
- bert-base torch / ONNX fp32 / ONNX int8: a randomly initialised encoder with BertConfig's default sizes
  (12 layers, hidden 768: bert-base) and the same head, tokenizer, harness and decide;
- with --layers N: the classifier cut to N evenly spaced layers (the distilled student's shape), int8 —
  latency only (its weights are not re-trained here).

Pipelines take turns in blocks of `--block` queries (rotating order, one untimed warm-up call per turn), so
load fluctuations on a shared machine hit every pipeline alike while each block runs with warm caches, as in a
process that only routes. Every engine gets the same thread count. Reported per stage: wall time and this
thread's CPU time (`time.thread_time`; with --threads 1 everything runs on the calling thread, so CPU time
is the latency the same code has on an idle core — the honest number on a shared machine).
Goals (issue "Ship the router"): int8 bundle p50 ≤ 2 ms on typical queries, ≥ 10× faster than bert-base.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_QUERIES = ROOT.parent / "shared" / "data" / "llmrouter" / "queries_train.jsonl"


def load_queries(path: Path, n: int, seed: int) -> list[str]:
    import pandas as pd

    df = pd.read_json(path, lines=True)
    col = "query" if "query" in df.columns else "prompt"
    texts = df[col].dropna().astype(str)
    return texts.sample(n=min(n, len(texts)), random_state=seed).tolist()


def pct(ts: list[float]) -> dict[str, float]:
    a = np.asarray(ts) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def side_bundle(bundle, clf, model, workdir: Path, threads: int, want_int8: bool):
    """A Bundle around another encoder `model` with `bundle`'s head, tokenizer, policy and int8 settings."""
    from kronaxis_lab.export.bundle import Bundle
    from kronaxis_lab.export.onnx_export import export_onnx, quantize_int8

    other = type(clf).__new__(type(clf))
    other.__dict__.update(clf.__dict__)
    other.model_ = model.eval().requires_grad_(False)
    workdir.mkdir(parents=True)
    shutil.copytree(bundle.dir / bundle.meta["files"]["tokenizer"], workdir / "tokenizer")
    export_onnx(other, workdir / "model.onnx", opset=int(bundle.meta["onnx"]["opset"]))
    files = {"onnx_fp32": "model.onnx", "tokenizer": "tokenizer", "onnx_int8": None}
    if want_int8:
        q = bundle.meta["onnx"].get("int8") or {}
        quantize_int8(workdir / "model.onnx", workdir / "model.int8.onnx", q.get("per_channel", True),
                      q.get("reduce_range", False))
        files["onnx_int8"] = "model.int8.onnx"
    meta = {**bundle.meta, "files": files, "default_variant": "fp32"}
    return other, Bundle(workdir, meta, intra_op_threads=threads, inter_op_threads=1)


def bert_base_model(clf, n_labels: int):
    """Randomly initialised encoder with BertConfig's default sizes (bert-base: 12 × 768, ~110M parameters)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=clf.tokenizer_.vocab_size, num_labels=n_labels))


def layer_dropped_model(clf, n_layers: int):
    """The classifier keeping `n_layers` evenly spaced encoder layers (the student's architecture; untrained)."""
    import copy

    from kronaxis_lab.classifiers.tier_predictor import keep_layers, n_encoder_layers, select_layers

    model = copy.deepcopy(clf.model_)
    keep_layers(model, select_layers(n_encoder_layers(model), n_layers))
    return model


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _stages(*marks: tuple[float, float]) -> list[float]:
    """Wall seconds per stage, then CPU seconds per stage (this thread), between consecutive marks."""
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return wall + cpu


class Pipelines:
    """Each factory returns run(text) → [wall tokenize, wall infer, wall post+decide, cpu ×3] in seconds."""

    def __init__(self, bundle, clf):
        self.bundle, self.clf = bundle, clf

    def onnx(self, b, variant):
        from kronaxis_lab.classifiers.tier_predictor import logits_to_proba

        rt = b.classifier
        sess = rt.session(variant)
        out = sess.get_outputs()[0].name

        def run(text):  # what Bundle.route does, stage by stage
            m0 = _now()
            feed, counts = rt.tokenizer.encode_with_counts([text])
            m1 = _now()
            z = sess.run([out], feed)[0]
            m2 = _now()
            P = logits_to_proba(z, rt.head, rt.tier_order_idx)[:, rt.columns]
            b.decide(P, input_tokens=counts)
            return _stages(m0, m1, m2, _now())

        return run

    def public(self, b, variant):
        def run(text):
            m0 = _now()
            b.route([text], variant=variant)
            w, c = _stages(m0, _now())
            return [0.0, 0.0, w, 0.0, 0.0, c]

        return run

    def torch(self, clf, b):
        import torch

        from kronaxis_lab.classifiers.tier_predictor import logits_to_proba

        model, tok = clf.model_.eval(), clf.tokenizer_
        cols = [b.label_order.index(n) for n in b.model_names]

        def run(text):
            m0 = _now()
            enc = tok([text], truncation=True, max_length=clf.max_length, padding=True, return_tensors="pt")
            m1 = _now()
            with torch.inference_mode():
                z = model(**enc).logits.numpy()
            m2 = _now()
            P = logits_to_proba(z, clf.head_, clf.tier_order_)[:, cols]
            b.decide(P, [text])
            return _stages(m0, m1, m2, _now())

        return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--block", type=int, default=50, help="queries per pipeline turn (pipelines rotate per block)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-bert-base", action="store_true")
    ap.add_argument("--no-bert-int8", action="store_true")
    ap.add_argument("--layers", type=int, default=0, help="also time an N-layer copy of the classifier (int8)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import onnxruntime
    import torch

    from kronaxis_lab.classifiers.base import load_classifier
    from kronaxis_lab.export.bundle import load_bundle

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    bundle = load_bundle(args.bundle, intra_op_threads=args.threads, inter_op_threads=1)
    clf = load_classifier(bundle.meta["source"]["classifier_dir"])
    clf.show_progress = False
    texts = load_queries(args.queries, args.n, args.seed)
    lengths = np.array([bundle.classifier.tokenizer.encode([t])["input_ids"].shape[1] for t in texts])
    pl = Pipelines(bundle, clf)
    runs = {"bundle int8": pl.onnx(bundle, "int8"), "bundle fp32": pl.onnx(bundle, "fp32"),
            "bundle.route() int8": pl.public(bundle, "int8"), "torch (same classifier)": pl.torch(clf, bundle)}
    extra = {}
    tmp = Path(tempfile.mkdtemp(prefix="routing_latency_"))
    if args.layers:
        small, sb = side_bundle(bundle, clf, layer_dropped_model(clf, args.layers), tmp / "small", args.threads, True)
        runs[f"{args.layers}-layer student shape int8 (untrained)"] = pl.onnx(sb, "int8")
    if not args.no_bert_base:
        model = bert_base_model(clf, len(bundle.label_order))
        extra["bert_base_params"] = sum(p.numel() for p in model.parameters())
        big, bb = side_bundle(bundle, clf, model, tmp / "bert_base", args.threads, not args.no_bert_int8)
        runs["bert-base torch"] = pl.torch(big, bundle)
        runs["bert-base ONNX fp32"] = pl.onnx(bb, "fp32")
        if not args.no_bert_int8:
            runs["bert-base ONNX int8"] = pl.onnx(bb, "int8")
    names = list(runs)
    for name in names:  # sessions, lazy imports, allocator warm-up
        for t in texts[: args.warmup]:
            runs[name](t)
    stages = {n: [] for n in names}
    t_start = time.perf_counter()
    for b_i, s0 in enumerate(range(0, len(texts), args.block)):
        block = texts[s0:s0 + args.block]
        for k in range(len(names)):
            name = names[(b_i + k) % len(names)]
            runs[name](block[0])  # untimed: re-warm caches after the previous pipeline's block
            stages[name] += [runs[name](t) for t in block]
    wall = time.perf_counter() - t_start
    load1 = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)

    res = {"n_queries": len(texts), "threads": args.threads, "tokens_p50": float(np.median(lengths)),
           "tokens_p90": float(np.percentile(lengths, 90)), "max_length": bundle.meta["max_length"],
           "bundle": str(args.bundle), "classifier": bundle.meta["source"].get("classifier_class"),
           "base_model": bundle.meta["source"].get("base_model"), "policy": bundle.policy_name,
           "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "loadavg_start": load0, "loadavg_end": load1,
                       "python": platform.python_version(), "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__},
           "wall_s": wall, **extra, "pipelines": {}}
    for name in names:
        a = np.asarray(stages[name])
        res["pipelines"][name] = {
            "wall": {"total": pct(a[:, :3].sum(axis=1)), "tokenize": pct(a[:, 0]), "infer": pct(a[:, 1]),
                     "post_decide": pct(a[:, 2])},
            "cpu": {"total": pct(a[:, 3:].sum(axis=1)), "tokenize": pct(a[:, 3]), "infer": pct(a[:, 4]),
                    "post_decide": pct(a[:, 5])}}
    print(f"{len(texts)} queries (tokens p50 {res['tokens_p50']:.0f}, p90 {res['tokens_p90']:.0f}, max "
          f"{res['max_length']}), {args.threads} thread(s), load {load0[0]:.1f} → {load1[0]:.1f}")
    # thread CPU time counts only the calling thread: a faithful "idle machine" latency with 1 thread only
    for clock in ("wall", "cpu") if args.threads == 1 else ("wall",):
        ref = res["pipelines"]["bundle int8"][clock]["total"]["p50_ms"]
        print(f"\n{clock} time (ms)\n| pipeline | p50 | p99 | tokenize p50 | inference p50 | post+decide p50 | "
              "p50 / int8 bundle |\n|---|---:|---:|---:|---:|---:|---:|")
        for name in names:
            p = res["pipelines"][name][clock]
            print(f"| {name} | {p['total']['p50_ms']:.2f} | {p['total']['p99_ms']:.2f} | "
                  f"{p['tokenize']['p50_ms']:.3f} | {p['infer']['p50_ms']:.2f} | {p['post_decide']['p50_ms']:.3f} | "
                  f"{p['total']['p50_ms'] / ref:.1f}× |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    main()
