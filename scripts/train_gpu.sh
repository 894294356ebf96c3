#!/usr/bin/env bash
# Train the shipped 128 px explainer recipe on one GPU within 9 minutes, then evaluate it.
# Usage: bash scripts/train_gpu.sh DATASET_DIR [RUN_DIR]
#   DATASET_DIR: a prepared dataset folder with labels.csv (docs/datasets.md)
#   RUN_DIR:     checkpoints, logs and the evaluation (default /tmp/exaggeration_gpu_run); outside the repo.
# Needs CUDA (AMP with one GradScaler per optimiser is switched on automatically). Re-running resumes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ]; then echo "usage: bash scripts/train_gpu.sh DATASET_DIR [RUN_DIR] (a folder with labels.csv, see docs/datasets.md)" >&2; exit 2; fi
dataset="$(realpath -m "$1")"  # paths are relative to where the user is, not to the repository
run_dir="$(realpath -m "${2:-/tmp/exaggeration_gpu_run}")"
cd "$repo"
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: this script is for a GPU machine (see docs/training.md for the CPU recipe)")'
# train_cpu.json is the shipped recipe (chosen by the CPU ablation, docs/training.md); train_gpu.json widens it.
configs="['bundles/cxr/configs/train.json','bundles/cxr/configs/train_cpu.json','bundles/cxr/configs/train_gpu.json']"
start=$(date +%s)
python -m monai.bundle run training --config_file "$configs" --bundle_root bundles/cxr --dataset_dir "$dataset" \
  --ckpt_dir "$run_dir/models" --output_dir "$run_dir/eval"
echo "[train_gpu] training took $(( $(date +%s) - start )) s; evaluating $run_dir/models/explainer_best.pt"
python -m monai.bundle run evaluating \
  --config_file "['bundles/cxr/configs/inference.json','bundles/cxr/configs/evaluate.json']" \
  --bundle_root bundles/cxr --dataset_dir "$dataset" --num_images 200 \
  --explainer_weights "$run_dir/models/explainer_best.pt" --output_dir "$run_dir/evaluation"
echo "[train_gpu] done in $(( $(date +%s) - start )) s: $run_dir/evaluation/report.html"
