"""Routing quality: every classifier trained on the train split, replayed on the held-out test split.

    .venv/bin/python benchmarks/quality.py --write benchmarks/quality.md
    .venv/bin/python benchmarks/quality.py --datasets llmrouter --classifiers tier_predictor knn tfidf_logreg
    .venv/bin/python benchmarks/quality.py --classifiers tier_predictor@classifier.training_args.num_train_epochs=1 knn

For each dataset: `kronaxis-train` each classifier (its val split drives early stopping; the test split is
never seen), then one `kronaxis-replay` with all of them next to the reference routers (oracle, random,
always-*). Each trained classifier is shown under its best policy *chosen on the val split* (highest val
AIQ), so the test numbers are not tuned on test. `make demo` runs this with the default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CLASSIFIERS = ["tier_predictor", "knn_routerbench", "mlp", "tfidf_logreg", "mf", "rules"]


def compose(config: str, overrides: list[str], out: Path):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from kronaxis_lab.pipelines.common import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hcompose(config_name=config, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


def pick_policy_on_val(metrics: dict, label: str) -> str:
    """The policy with the best AIQ on the *val* split (see --val-replay)."""
    cands = {k: v for k, v in metrics.items() if k.startswith(label + "+")}
    return max(cands, key=lambda k: cands[k]["aiq"] or 0.0)


def run_dataset(dataset: str, classifiers: list[str], out: Path, extra: list[str]) -> tuple[pd.DataFrame, dict]:
    from kronaxis_lab.pipelines.replay import run as replay_run
    from kronaxis_lab.pipelines.train import run as train_run

    dirs, timing = [], {}
    specs, classifiers = classifiers, []
    for spec in specs:  # "name@override@override": per-classifier Hydra overrides
        clf, *clf_over = spec.split("@")
        classifiers.append(clf)
        t0 = time.perf_counter()
        res = train_run(compose("train", [f"dataset={dataset}", f"classifier={clf}", *clf_over, *extra], out / "train" / clf))
        timing[clf] = {"train_s": time.perf_counter() - t0, "val_mean_auc": res["metrics"].get("val", {}).get("mean_auc")}
        dirs.append(res["classifier_dir"])
        print(f"[{dataset}] trained {clf} in {timing[clf]['train_s']:.0f} s (val mean AUC {timing[clf]['val_mean_auc']})", flush=True)
    dir_list = "[" + ",".join(dirs) + "]"
    # policy choice per classifier on val (replay the val split), numbers reported on test
    val = replay_run(compose("replay", [f"dataset={dataset}", f"classifier_dir={dir_list}", "split=val", *extra], out / "replay_val"))
    test = replay_run(compose("replay", [f"dataset={dataset}", f"classifier_dir={dir_list}", *extra], out / "replay"))
    m, mv = test["metrics"], val["metrics"]
    rows = []
    for clf, d in zip(classifiers, dirs):
        label = next(k.split("+")[0] for k in m if Path(d).parent.name in k)
        best = pick_policy_on_val(mv, label)
        r = m[best]
        rows.append({"router": f"{clf} ({best.split('+')[-1]})", "aiq": r["aiq"], "max_accuracy": r["max_accuracy"],
                     "savings_at_95pct_premium": r["savings_at_95pct_premium"], "cpao_at_95pct_premium": r["cpao_at_95pct_premium"],
                     "apgr": r["apgr"], "train_s": timing[clf]["train_s"], "val_mean_auc": timing[clf]["val_mean_auc"]})
    for ref in ["oracle", "random", "task-prior+wtp", f"always:{test['result'].premium}", f"always:{test['result'].cheapest}"]:
        if ref in m:
            r = m[ref]
            rows.append({"router": ref, "aiq": r["aiq"], "max_accuracy": r["max_accuracy"],
                         "savings_at_95pct_premium": r["savings_at_95pct_premium"],
                         "cpao_at_95pct_premium": r["cpao_at_95pct_premium"], "apgr": r["apgr"]})
    return pd.DataFrame(rows), {"n_test": test["result"].n_queries, "report": test["paths"]["report"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["llmrouter", "routellm_mmlu_gsm8k"])
    ap.add_argument("--classifiers", nargs="+", default=DEFAULT_CLASSIFIERS)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "quality"))
    ap.add_argument("--write", default=None, help="write the markdown results table here")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every train/replay run")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    sections = []
    for ds in a.datasets:
        table, info = run_dataset(ds, a.classifiers, Path(a.out) / ds, a.overrides)
        fmt = table.copy()
        for c in ("savings_at_95pct_premium",):
            fmt[c] = fmt[c].map(lambda v: "—" if v is None or pd.isna(v) else f"{v:.1%}")
        text = fmt.to_markdown(index=False, floatfmt=".4g")
        print(f"\n## {ds} ({info['n_test']} test queries) — report: {info['report']}\n{text}\n", flush=True)
        sections.append(f"## {ds} ({info['n_test']:,} test queries)\n\n{text}\n")
    total = time.perf_counter() - t0
    if a.write:
        cmd = "python benchmarks/quality.py " + " ".join(["--datasets", *a.datasets, "--classifiers", *a.classifiers, *a.overrides])
        head = ["# Routing quality on held-out test splits", "",
                f"- machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; total {total / 60:.1f} min",
                f"- command: `.venv/bin/{cmd}`",
                "- each classifier is shown under the policy with the best AIQ on the **val** split; numbers are on **test**.",
                "- AIQ: RouterBench area under the non-decreasing convex hull over the shared cost range; savings at 95 % of",
                "  premium accuracy read off the hull (— = never reaches it).", ""]
        Path(a.write).write_text("\n".join(head) + "\n".join(sections))
    print(json.dumps({"minutes": round(total / 60, 1)}))


if __name__ == "__main__":
    main()
