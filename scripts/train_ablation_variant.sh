#!/usr/bin/env bash
# Train one explainer ablation variant on a fixed wall-clock budget, outside the repository.
# Usage: bash scripts/train_ablation_variant.sh VARIANT BUDGET_SECONDS RUN_DIR DATASET_DIR [extra bundle overrides...]
#   VARIANT: a .. g (bundles/cxr/configs/ablation_<v>_*.json); RUN_DIR gets models/ and eval/. The
#   deformation variants (a file name with "deformation") are merged over train_deformation.json.
# Threads: OMP_NUM_THREADS (default 1, so that two variants can run side by side on 2 cores).
# Re-running the same command resumes from RUN_DIR/models (the budget counts all sittings together).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 4 ]; then echo "usage: bash scripts/train_ablation_variant.sh VARIANT BUDGET_SECONDS RUN_DIR DATASET_DIR [overrides...]" >&2; exit 2; fi
variant="$1"; budget="$2"; run_dir="$(realpath -m "$3")"; dataset="$(realpath -m "$4")"
shift 4
override=$(ls "$repo"/bundles/cxr/configs/ablation_"$variant"_*.json 2>/dev/null | head -1)
if [ -z "$override" ]; then echo "no override bundles/cxr/configs/ablation_${variant}_*.json" >&2; exit 2; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$run_dir"
cd "$repo"
base="'bundles/cxr/configs/train.json','bundles/cxr/configs/train_cpu.json'"
case "$(basename "$override")" in *deformation*) base="$base,'bundles/cxr/configs/train_deformation.json'" ;; esac
exec python -m monai.bundle run training \
  --config_file "[$base,'${override#"$repo"/}']" \
  --bundle_root bundles/cxr --dataset_dir "$dataset" \
  --ckpt_dir "$run_dir/models" --output_dir "$run_dir/eval" --max_seconds "$budget" "$@"
