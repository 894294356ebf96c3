#!/usr/bin/env bash
# Quick start, tests: set up the environment, then run the test suite (arguments go to pytest).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
python -m pytest -q "$@"
