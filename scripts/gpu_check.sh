#!/usr/bin/env bash
# Every GPU check of docs/gpu-validation.md in one run (scripts/gpu_check.py does the work):
#
#   bash scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--only STEP,...] [--skip STEP,...] [--budget-s S]
#   bash scripts/gpu_check.sh --dry-run [--out DIR]     # CPU machine: list the steps, run the CPU-able ones
#   bash scripts/gpu_check.sh --list
#
# Writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: ./gpu-check). Uses the checkout in
# place (PYTHONPATH), so nothing is installed; the python that holds torch is $PYTHON (default
# python3). --wheels DIR first installs the wheels in DIR (no index, no dependencies) into
# DIR/../site for packages the machine lacks (timm, pytest, ...). The run stops after
# $GPU_CHECK_TIMEOUT seconds (default 480) whatever happens; the reports are written after
# every step, so a cut-short run still leaves them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) [[ $# -ge 2 ]] || { echo "error: --wheels needs a folder of .whl files" >&2; exit 2; }
              WHEELS="$2"; shift 2 ;;
    --wheels=*) WHEELS="${1#--wheels=}"; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exec "$PYTHON" "$ROOT/scripts/gpu_check.py" --help ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: python '$PYTHON' not found; set PYTHON=/path/to/the/python/that/holds/torch" >&2
  exit 2
fi
if [[ -n "$WHEELS" ]]; then
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "error: --wheels $WHEELS holds no .whl files" >&2
    exit 2
  fi
  SITE="$(cd "$WHEELS/.." && pwd)/site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" "$ROOT/scripts/gpu_check.py" ${ARGS[@]+"${ARGS[@]}"}
