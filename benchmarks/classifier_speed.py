"""Inference speed of every classifier on CPU: batch-1 latency (p50/p95) and batch-64 throughput.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/classifier_speed.py --write benchmarks/classifier_speed.md
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/classifier_speed.py --classifiers tfidf_logreg rules   # a subset

Each classifier is trained through `kronaxis-train` (its own config, `limit_train` LLMRouter train queries;
the tier predictor for 1 epoch — inference speed does not depend on how well it was trained), then
`predict_proba` is timed on LLMRouter test queries it never saw, all in one process, one after the other:
- batch 1: `--n-latency` single-query calls (random test queries, a warm-up first), p50 and p95;
- batch 64: `--n-throughput` queries in calls of 64, queries per second.
The embedding cache is off (`paths.cache_dir=null`), so the embedding routers pay for encoding every query,
as they do in serving. The exported ONNX bundle (what `kronaxis-serve` runs) is measured separately in
benchmarks/routing_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train_speed import MARK_END, MARK_START, machine  # noqa: E402

DEFAULT = ["tier_predictor", "tier_predictor_ordinal", "student", "knn", "knn_routerbench", "knn_intents", "rules",
           "knn_fallback_rules", "tfidf_logreg", "mlp", "mf"]


def quiet(clf) -> None:
    for obj in (clf, getattr(clf, "primary", None), getattr(clf, "fallback", None)):
        if obj is not None and hasattr(obj, "show_progress"):
            obj.show_progress = False
        emb = getattr(obj, "embedding", None)
        if emb is not None and hasattr(emb, "show_progress"):
            emb.show_progress = False


def speed(clf, queries: list[str], n_latency: int, n_throughput: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    quiet(clf)
    clf.predict_proba(queries[:64])  # warm-up: lazy model loads, first-call allocations
    lat = []
    for i in rng.choice(len(queries), n_latency):
        t = time.perf_counter()
        clf.predict_proba([queries[i]])
        lat.append(time.perf_counter() - t)
    batch = [queries[i] for i in rng.choice(len(queries), n_throughput)]
    t = time.perf_counter()
    for s in range(0, len(batch), 64):
        clf.predict_proba(batch[s:s + 64])
    thr = len(batch) / (time.perf_counter() - t)
    return {"b1_p50_ms": 1000 * float(np.percentile(lat, 50)), "b1_p95_ms": 1000 * float(np.percentile(lat, 95)),
            "b64_qps": thr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifiers", nargs="+", default=DEFAULT)
    ap.add_argument("--limit-train", type=int, default=2000)
    ap.add_argument("--n-latency", type=int, default=200)
    ap.add_argument("--n-throughput", type=int, default=1280)
    ap.add_argument("--out", default="/tmp/kronaxis_classifier_speed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write", default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kronaxis_lab.pipelines.common import load_dataset
    from kronaxis_lab.pipelines.compare import compose
    from kronaxis_lab.pipelines.train import run as train_run

    base = ["dataset=llmrouter", f"limit_train={a.limit_train}", "paths.cache_dir=null",
            "classifier.training_args.num_train_epochs=1"]
    load1 = os.getloadavg()
    test = load_dataset(compose("train", ["dataset=llmrouter"], Path(a.out) / "ds")).matrices("test")
    queries = test.queries["text"].astype(str).tolist()
    rows, teacher_dir = [], None
    order = sorted(a.classifiers, key=lambda c: c == "student")  # the student needs a trained tier predictor
    for name in order:
        over = [f"classifier={name}"]
        if name.startswith("tier_predictor") or name == "student":
            over += base
        else:
            over += [o for o in base if "training_args" not in o]
        if name == "student":
            if teacher_dir is None:
                raise SystemExit("student needs tier_predictor in --classifiers (its teacher)")
            over.append(f"classifier.teacher={teacher_dir}")
        res = train_run(compose("train", over, Path(a.out) / name))
        if name == "tier_predictor":
            teacher_dir = res["classifier_dir"]
        s = speed(res["classifier"], queries, a.n_latency, a.n_throughput)
        rows.append({"classifier": name, "class": res["metrics"]["classifier"], "fit_s": res["metrics"]["train_seconds"],
                     "n_train": res["metrics"]["n_train"], **s})
        print(json.dumps(rows[-1]), flush=True)
    load2 = os.getloadavg()
    cmd = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/classifier_speed.py " + " ".join(sys.argv[1:])
    lines = [f"Machine: {machine()}  ", f"Command: `{cmd}`  ",
             f"Load average (1/5/15 min) at start: {' '.join(f'{x:.2f}' for x in load1)}; at end: "
             f"{' '.join(f'{x:.2f}' for x in load2)}", "",
             "| classifier | class | fit (s, LLMRouter train queries) | batch 1 p50 (ms) | batch 1 p95 (ms) | batch 64 (queries/s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['classifier']} | {r['class']} | {r['fit_s']:.1f} ({r['n_train']:,}) | {r['b1_p50_ms']:.2f} | "
              f"{r['b1_p95_ms']:.2f} | {r['b64_qps']:,.0f} |" for r in rows]
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    text = "\n".join(lines) + "\n"
    print(text)
    if a.write:
        p = Path(a.write)
        doc = p.read_text() if p.exists() else f"# Classifier inference speed\n\n{MARK_START}\n{MARK_END}\n"
        pre, rest = doc.split(MARK_START, 1)
        p.write_text(pre + MARK_START + "\n" + text + MARK_END + rest.split(MARK_END, 1)[1])


if __name__ == "__main__":
    main()
