#!/usr/bin/env bash
# Quick start, main job: set up the environment, then explain chest X-rays with the shipped models.
# With no arguments it explains the real CR chest RG1_UNCR.dcm from pydicom-data: a 10-frame
# progressive-exaggeration series as DICOM Secondary Capture, CSV logs and quick-looks under
# ./exaggeration_output. Any arguments go to the bundle's inference workflow, e.g.
#   bash scripts/quickstart.sh --input FOLDER --output_dir DIR [--num_frames 5] [--bits 16]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
python -m monai.bundle run inference \
    --config_file bundles/cxr/configs/inference.json --bundle_root bundles/cxr "$@"
