#!/usr/bin/env bash
# Quick start, main job: set up the environment, then score chest X-rays with the shipped classifier.
# With no arguments it scores the real CR chest RG1_UNCR.dcm from pydicom-data and writes classify_output/scores.csv.
# Any arguments go to `python -m monai_exaggeration classify` (e.g. --input FOLDER --output_dir DIR).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
python -m monai_exaggeration classify "$@"
