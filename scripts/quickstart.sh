#!/usr/bin/env bash
# Quick start, main job: set up the environment, then explain chest X-rays with the shipped models.
# With no arguments it explains the real CR chest RG1_UNCR.dcm from pydicom-data: a 10-frame
# progressive-exaggeration series as DICOM Secondary Capture, CSV logs and quick-looks under
# ./exaggeration_output (in the current folder). Any arguments go to the bundle's inference workflow, e.g.
#   bash scripts/quickstart.sh --input FOLDER --output_dir DIR [--num_frames 5] [--bits 16]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
# No cd: paths on the command line are relative to where the user is, and so is the output.
python -m monai.bundle run inference \
    --config_file "$repo/bundles/cxr/configs/inference.json" --bundle_root "$repo/bundles/cxr" "$@"
