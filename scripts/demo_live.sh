#!/usr/bin/env bash
# Live demo: label the live mix (50 GSM8K + 50 MMLU + 20 HumanEval) with the two tiny local CPU models,
# then train a router on that table and replay its test split.
#
#   scripts/demo_live.sh                       # outputs under outputs/demo_live/
#   OUT=/tmp/demo CLASSIFIER=tfidf_logreg scripts/demo_live.sh
#   scripts/demo_live.sh dataset.parts.0.limit=10   # extra arguments go to kronaxis-label (question set:
#                                                  # configs/questions/live_mix.yaml)
#
# Rerunning resumes the labelling from its cache (outputs/demo_live/label/label_cache.sqlite).
# Expect the tiny models to score near 0 on GSM8K and HumanEval and near chance (25 %) on MMLU.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/demo_live}
CLASSIFIER=${CLASSIFIER:-knn}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export TOKENIZERS_PARALLELISM=false

start=$(date +%s)
echo "== label: live_mix × local_cpu fleet → $OUT/label"
"$BIN/kronaxis-label" dataset=live_mix fleet=local_cpu hydra.run.dir="$OUT/label" "$@"
label_s=$(( $(date +%s) - start ))
cat "$OUT/label/summary.md"
echo "labelling took ${label_s}s"

echo "== train: classifier=$CLASSIFIER on the labelled train split → $OUT/train"
"$BIN/kronaxis-train" dataset=saved dataset.path="$OUT/label" classifier="$CLASSIFIER" hydra.run.dir="$OUT/train"
echo "== replay: test split through the reference routers + the trained router → $OUT/replay"
"$BIN/kronaxis-replay" dataset=saved dataset.path="$OUT/label" classifier_dir="$OUT/train/classifier" \
  hydra.run.dir="$OUT/replay"
echo "demo_live done in $(( $(date +%s) - start ))s"
