"""Tier predictor speed on CPU: fine-tuning throughput, inference latency/throughput, and the distilled student.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_speed.py --write benchmarks/train_speed.md
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_speed.py --n-train 2000 --skip-distill   # quick look

1. Training: `--n-train` (10,000) real LLMRouter query texts (sampled with replacement from the 5,608 of
   ../shared/data/llmrouter, with their recorded 9-model scores) × 1 epoch with the default config
   (configs/classifier/tier_predictor.yaml), no validation. Goal: ≤ 5 min on 2 cores.
2. Inference: batch-1 latency (p50/p95, tokenisation included) and batch-64 throughput of predict_proba.
3. Distillation (skip with --skip-distill): seeded 70/15/15 split of LLMRouter; a teacher (default config,
   early stopping on a split of its train part) and a 3-layer student (configs/classifier/student.yaml,
   trained on the teacher's predictions for the train queries) — per-model AUC on the held-out 15 %, mean
   |student − teacher|, and the speed of both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

MARK_START, MARK_END = "<!-- generated:start -->", "<!-- generated:end -->"


def load_llmrouter(data_dir: Path):
    rows = json.loads((data_dir / "llmrouter" / "scores_train.json").read_text())
    names = list(rows[0]["scores"])
    queries = [r["question"] for r in rows]
    scores = np.array([[float(r["scores"][m]) for m in names] for r in rows])
    cand = json.loads((data_dir / "llmrouter" / "llm_candidates.json").read_text())
    costs = {m: float(cand[m]["input_price"]) + float(cand[m]["output_price"]) for m in names}
    return queries, np.clip(scores, 0, 1), names, costs


def load_config(name: str, **overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "configs" / "classifier" / f"{name}.yaml")
    for d in cfg.pop("defaults", []):  # the student/ordinal files extend tier_predictor.yaml
        if d != "_self_":
            cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "classifier" / f"{d}.yaml"), cfg)
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    return instantiate(cfg)


def inference_speed(clf, queries, n_latency: int, n_throughput: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    clf.predict_proba(queries[:8])  # warm-up
    lat = []
    for i in rng.choice(len(queries), n_latency):
        t = time.perf_counter()
        clf.predict_proba(queries[i])
        lat.append(time.perf_counter() - t)
    batch = [queries[i] for i in rng.choice(len(queries), n_throughput)]
    bs, clf.predict_batch_size = clf.predict_batch_size, 64
    show, clf.show_progress = clf.show_progress, False
    t = time.perf_counter()
    clf.predict_proba(batch)
    thr = n_throughput / (time.perf_counter() - t)
    clf.predict_batch_size, clf.show_progress = bs, show
    p50 = float(np.percentile(lat, 50))
    return {"b1_p50_ms": 1000 * p50, "b1_p95_ms": 1000 * float(np.percentile(lat, 95)), "b1_qps": 1 / p50,
            "b64_qps": thr}


def per_model_auc(P, Y, names):
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, m in enumerate(names):
        y = Y[:, j] >= 0.5
        out[m] = float(roc_auc_score(y, P[:, j])) if 0 < y.sum() < len(y) else float("nan")
    return out


def bench_train(queries, scores, names, n_train: int, seed: int) -> dict:
    idx = np.random.default_rng(seed).choice(len(queries), n_train, replace=True)
    q, y = [queries[i] for i in idx], scores[idx]
    clf = load_config("tier_predictor", val_fraction=0.0, training_args={"num_train_epochs": 1})
    t = time.perf_counter()
    clf.fit(q, y, names)
    fit_s = time.perf_counter() - t
    runtime = next((e["train_runtime"] for e in clf.train_log_ if "train_runtime" in e), float("nan"))
    return {"clf": clf, "n_train": n_train, "fit_s": fit_s, "trainer_runtime_s": float(runtime)}


def bench_distill(queries, scores, names, costs, seed: int, n_latency: int, n_throughput: int,
                  teacher_dir: str | None = None) -> dict:
    from kronaxis_lab.classifiers.base import load_classifier
    from kronaxis_lab.classifiers.distill import distill

    perm = np.random.default_rng(seed).permutation(len(queries))
    n = len(queries)
    tr, te = perm[: int(0.7 * n)], perm[int(0.85 * n):]  # 70 % train, 15 % val (unused here), 15 % held-out
    qtr, qte = [queries[i] for i in tr], [queries[i] for i in te]
    t = time.perf_counter()
    if teacher_dir:  # a teacher trained earlier on the same seeded split (saves an hour on a busy CPU)
        teacher = load_classifier(teacher_dir)
        if teacher.model_names_ != names:
            raise ValueError(f"{teacher_dir}: teacher columns {teacher.model_names_} differ from {names}")
        teacher_s = float("nan")
    else:
        teacher = load_config("tier_predictor")
        teacher.fit(qtr, scores[tr], names, model_costs=costs)
        teacher_s = time.perf_counter() - t
    student_cfg = load_config("student")
    kw = {k: v for k, v in student_cfg.get_config().items() if k not in ("head", "model_costs")}
    t = time.perf_counter()
    student = distill(teacher, qtr, **kw)
    student_s = time.perf_counter() - t
    Pt, Ps = teacher.predict_proba(qte), student.predict_proba(qte)
    return {
        "n_train": len(tr), "n_test": len(te), "teacher_fit_s": teacher_s, "student_fit_s": student_s,
        "teacher_layers": teacher.model_.config.num_hidden_layers, "student_layers": student.model_.config.num_hidden_layers,
        "teacher_auc": per_model_auc(Pt, scores[te], names), "student_auc": per_model_auc(Ps, scores[te], names),
        "mean_abs_diff": float(np.abs(Pt - Ps).mean()), "max_abs_diff": float(np.abs(Pt - Ps).max()),
        "teacher_speed": inference_speed(teacher, qte, n_latency, n_throughput),
        "student_speed": inference_speed(student, qte, n_latency, n_throughput),
        "teacher_epochs": max((e.get("epoch", 0) for e in teacher.train_log_), default=0),
        "student_epochs": max((e.get("epoch", 0) for e in student.train_log_), default=0),
    }


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    return (f"{cpu}; {os.cpu_count()} logical cores; torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"python {platform.python_version()}; GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")


def report(res: dict, cmd: str) -> str:
    lines = [f"Machine: {machine()}  ", f"Command: `{cmd}`  ",
             f"Load average (1/5/15 min) at start: {res['loadavg']}; at end: {res.get('loadavg_end', '?')}", ""]
    if "train" in res:
        tr, sp = res["train"], res["speed"]
        lines += [
            "| measure | value |", "|---|---|",
            f"| fine-tune {tr['n_train']:,} queries × 1 epoch (fit, incl. tokenisation) | {tr['fit_s']:.0f} s |",
            f"| of which Trainer.train | {tr['trainer_runtime_s']:.0f} s "
            f"({tr['n_train'] / tr['trainer_runtime_s']:.0f} queries/s) |",
            f"| inference batch 1, p50 / p95 latency | {sp['b1_p50_ms']:.1f} / {sp['b1_p95_ms']:.1f} ms "
            f"({sp['b1_qps']:.0f} queries/s) |",
            f"| inference batch 64 throughput | {sp['b64_qps']:.0f} queries/s |", "",
        ]
    d = res.get("distill")
    if d:
        names = list(d["teacher_auc"])
        lines += [f"### Distillation ({d['teacher_layers']} → {d['student_layers']} layers)", "",
                  "LLMRouter, seeded 70/15/15 split: teacher (default config, "
                  + (f"{d['teacher_fit_s']:.0f} s, " if d["teacher_fit_s"] == d["teacher_fit_s"] else "loaded with --teacher, ")
                  + f"{d['teacher_epochs']:.0f} epochs) and student ({d['student_fit_s']:.0f} s, {d['student_epochs']:.0f} epochs, "
                  f"on the teacher's predictions) trained on the same {d['n_train']:,} queries; AUC against the recorded "
                  f"outcomes (score ≥ 0.5) of {d['n_test']:,} held-out queries.", "",
                  "| model | teacher AUC | student AUC |", "|---|---|---|"]
        lines += [f"| {m} | {d['teacher_auc'][m]:.3f} | {d['student_auc'][m]:.3f} |" for m in names]
        ta, sa = np.nanmean(list(d["teacher_auc"].values())), np.nanmean(list(d["student_auc"].values()))
        ts, ss = d["teacher_speed"], d["student_speed"]
        lines += [f"| **mean** | **{ta:.3f}** | **{sa:.3f}** |", "",
                  f"Mean / max |student − teacher| probability: {d['mean_abs_diff']:.3f} / {d['max_abs_diff']:.3f}.", "",
                  "| speed | teacher | student | speed-up |", "|---|---|---|---|",
                  f"| batch 1 p50 latency | {ts['b1_p50_ms']:.1f} ms | {ss['b1_p50_ms']:.1f} ms | {ts['b1_p50_ms'] / ss['b1_p50_ms']:.2f}× |",
                  f"| batch 64 throughput | {ts['b64_qps']:.0f} q/s | {ss['b64_qps']:.0f} q/s | {ss['b64_qps'] / ts['b64_qps']:.2f}× |", ""]
    return "\n".join(lines)


def write_md(path: Path, body: str) -> None:
    block = f"{MARK_START}\n{body}\n{MARK_END}"
    text = path.read_text() if path.is_file() else "# Tier predictor: training and inference speed\n\n" + block + "\n"
    if MARK_START in text and MARK_END in text:
        text = text[: text.index(MARK_START)] + block + text[text.index(MARK_END) + len(MARK_END):]
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("KRONAXIS_DATA_MIRROR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-latency", type=int, default=200)
    ap.add_argument("--n-throughput", type=int, default=2048)
    ap.add_argument("--skip-distill", action="store_true")
    ap.add_argument("--skip-train", action="store_true", help="skip part 1 (and 2)")
    ap.add_argument("--teacher", default=None, help="saved teacher trained on the same seeded 70 %% split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", default=None, help="markdown file to update (between the generated markers)")
    ap.add_argument("--json", default=None, help="also dump the raw numbers here")
    a = ap.parse_args()
    queries, scores, names, costs = load_llmrouter(Path(a.data_dir))
    res = {"loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if not a.skip_train:
        tr = bench_train(queries, scores, names, a.n_train, a.seed)
        res["speed"] = inference_speed(tr.pop("clf"), queries, a.n_latency, a.n_throughput)
        res["train"] = tr
        print(json.dumps(res, indent=1), flush=True)
    if not a.skip_distill:
        res["distill"] = bench_distill(queries, scores, names, costs, a.seed, a.n_latency, a.n_throughput, a.teacher)
        print(json.dumps(res["distill"], indent=1), flush=True)
    res["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    body = report(res, cmd.strip())
    print(body)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.write:
        write_md(Path(a.write), body)


if __name__ == "__main__":
    main()
