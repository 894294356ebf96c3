#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install monai_exaggeration with its test extra.
# Usage: source scripts/setup_env.sh   (or: bash scripts/setup_env.sh)
# Environment: VENV (default .venv), PYTHON (default python3),
#              TORCH_SPEC (default "torch==2.13.0"; installed first so no other torch build is pulled in).
# Idempotent: a ready environment (same setup.cfg and torch spec as the last install, every package
# findable) is detected without importing torch, in well under 2 s, and nothing is installed.
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
# What the last install was made from: the package's requirements and the torch spec.
want="$(cat "$repo/setup.cfg" "$repo/pyproject.toml"; echo "$torch_spec")"
want="$(printf '%s' "$want" | cksum | cut -d' ' -f1)"
ready() {
  [ "$(cat "$venv/.installed" 2>/dev/null)" = "$want" ] && python - <<'PY'
import importlib.util, sys
need = ("monai_exaggeration", "torch", "monai", "pytest", "pytest_timeout", "data_store", "highdicom", "pynetdicom")
sys.exit(0 if all(importlib.util.find_spec(name) for name in need) else 1)
PY
}
if ! ready; then
  echo "[setup] installing $torch_spec, then monai_exaggeration[test] (a few minutes the first time)"
  log="$venv/setup.log"
  if ! { python -m pip install --disable-pip-version-check --upgrade pip \
         && python -m pip install --disable-pip-version-check "$torch_spec" \
         && python -m pip install --disable-pip-version-check -e "$repo[test]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "[setup] installation failed; the whole pip log is in $log" >&2
    exit 1
  fi
  echo "$want" > "$venv/.installed"
fi
echo "[setup] ready: $(python - <<'PY'
from importlib.metadata import version
print(", ".join(f"{name} {version(name)}" for name in ("monai_exaggeration", "monai", "torch")))
PY
)"
