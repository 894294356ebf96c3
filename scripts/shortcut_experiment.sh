#!/usr/bin/env bash
# The faithfulness checks' shortcut experiment, end to end (docs/evaluation.md, "Faithfulness checks").
# Usage: bash scripts/shortcut_experiment.sh DATASET_DIR RUN_DIR [EXPLAINER_SECONDS] [NUM_IMAGES]
#   1. RUN_DIR/data: a copy of DATASET_DIR (labels.csv, 8-bit PNG/JPEG) with a marker planted in 95 % of
#      the positives and 5 % of the negatives (scripts/make_shortcut_dataset.py);
#   2. RUN_DIR/classifier: the classifier bundle's CPU recipe trained on the copy for 6 epochs
#      (configs/shortcut.json), then its test-split ROC-AUC with the marker (the copy) and without
#      (the original images): RUN_DIR/classifier/eval_{marked,clean}/test/metrics.json;
#   3. RUN_DIR/explainer: the shipped explainer recipe retrained against it for EXPLAINER_SECONDS
#      (default 3600; re-running resumes);
#   4. RUN_DIR/evaluation: every method evaluated with --faithfulness true on NUM_IMAGES (default 48)
#      validation images of the copy, with methods.csv and report.html comparing them.
# Threads: OMP_NUM_THREADS (default 2). Steps whose outputs exist are skipped.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then echo "usage: bash scripts/shortcut_experiment.sh DATASET_DIR RUN_DIR [EXPLAINER_SECONDS] [NUM_IMAGES]" >&2; exit 2; fi
dataset="$(realpath -m "$1")"; run="$(realpath -m "$2")"; budget="${3:-3600}"; images="${4:-48}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
cd "$repo"
classifier_configs="['bundles/cxr_classifier/configs/train.json','bundles/cxr_classifier/configs/classifier_cpu.json','bundles/cxr_classifier/configs/shortcut.json'"
weights="$run/classifier/shortcut_classifier.pt"
[ -f "$run/data/markers.csv" ] || python scripts/make_shortcut_dataset.py --dataset_dir "$dataset" --output_dir "$run/data"
if [ ! -f "$weights" ]; then
  python -m monai.bundle run training --config_file "$classifier_configs]" --bundle_root bundles/cxr_classifier \
    --dataset_dir "$run/data" --ckpt_dir "$run/classifier"
fi
for pair in "marked:$run/data" "clean:$dataset"; do
  [ -f "$run/classifier/eval_${pair%%:*}/test/metrics.json" ] && continue
  python -m monai.bundle run evaluating --config_file "$classifier_configs,'bundles/cxr_classifier/configs/evaluate.json']" \
    --bundle_root bundles/cxr_classifier --dataset_dir "${pair#*:}" --ckpt_dir "$run/classifier" \
    --output_dir "$run/classifier/eval_${pair%%:*}"
done
OMP_NUM_THREADS="$OMP_NUM_THREADS" bash scripts/train_ablation_variant.sh e "$budget" "$run/explainer" "$run/data" \
  --classifier_weights "$weights"
python -m monai.bundle run evaluating \
  --config_file "['bundles/cxr/configs/inference.json','bundles/cxr/configs/evaluate.json']" --bundle_root bundles/cxr \
  --dataset_dir "$run/data" --output_dir "$run/evaluation" --num_images "$images" --faithfulness true \
  --faithfulness_images "$images" --occlusion false --classifier_weights "$weights" \
  --explainer_weights "$run/explainer/models/explainer_best.pt" \
  --methods "['progressive_exaggeration','latent_shift','gradient_ascent']"
