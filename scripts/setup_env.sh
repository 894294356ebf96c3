#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install monai_exaggeration with its test extra.
# Usage: source scripts/setup_env.sh   (or: bash scripts/setup_env.sh)
# Environment: VENV (default .venv), PYTHON (default python3),
#              TORCH_SPEC (default "torch==2.13.0"; installed first so no other torch build is pulled in).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
if ! python -c "import monai_exaggeration, torch, monai, pytest, data_store" >/dev/null 2>&1 \
   || [ "$repo/setup.cfg" -nt "$venv/.installed" ]; then
  echo "[setup] installing $torch_spec, then monai_exaggeration[test] (a few minutes the first time)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "$torch_spec"
  python -m pip install --quiet -e "$repo[test]"
  touch "$venv/.installed"
fi
echo "[setup] ready: $(python -c 'import torch, monai, monai_exaggeration as m; print(f"monai_exaggeration {m.__version__}, monai {monai.__version__}, torch {torch.__version__}")')"
