"""Routing quality: every classifier trained on the train split, replayed on the held-out test split.

    .venv/bin/python benchmarks/quality.py --write benchmarks/quality.md
    .venv/bin/python benchmarks/quality.py --datasets llmrouter --classifiers tier_predictor knn_routerbench tfidf_logreg
    .venv/bin/python benchmarks/quality.py --classifiers tp1:tier_predictor@classifier.training_args.num_train_epochs=1 knn

A thin wrapper over `kronaxis-compare` (kronaxis_lab/pipelines/compare.py): per dataset, train each classifier
(val drives early stopping; test is never seen), replay val to choose each classifier's policy (best val AIQ),
replay test and report it next to oracle / random / per-category prior / single models. This script adds the
machine and command to the table it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=None, help="default: configs/compare.yaml")
    ap.add_argument("--classifiers", nargs="+", default=None, help="[label:]config[@override]...; default: compare.yaml")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "quality"))
    ap.add_argument("--write", default=None, help="write the markdown results table here")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every train/replay run")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kronaxis_lab.pipelines.compare import compose
    from kronaxis_lab.pipelines.compare import run as compare_run

    quote = lambda xs: "[" + ",".join(f"'{x}'" for x in xs) + "]"  # noqa: E731
    over = [f"overrides={quote(a.overrides)}"]
    if a.datasets:
        over.append(f"datasets={quote(a.datasets)}")
    if a.classifiers:
        over.append(f"classifiers={quote(a.classifiers)}")
    res = compare_run(compose("compare", over, Path(a.out)))
    print(res["markdown"], flush=True)
    if a.write:
        cmd = " ".join(["python benchmarks/quality.py", *sum([[f"--{k}", *v] for k, v in
                                                             (("datasets", a.datasets), ("classifiers", a.classifiers)) if v], []),
                        *a.overrides])
        head = [f"- machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; total {res['minutes']:.1f} min",
                f"- command: `.venv/bin/{cmd}`", ""]
        md = res["markdown"].replace("\n\n", "\n\n" + "\n".join(head) + "\n", 1)
        Path(a.write).write_text(md)
    print(json.dumps({"minutes": round(res["minutes"], 1)}))


if __name__ == "__main__":
    main()
