#!/usr/bin/env bash
# Creates .venv in the checkout (if missing) and installs algm-export with its test, TensorRT-RTX
# and serving (PyTriton, tritonclient) and Ray extras. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import algm_export, torch, timm, onnxscript, tensorrt_rtx, pytest, hypothesis, pytriton, tritonclient.grpc, tritonclient.http, ray.data" >/dev/null 2>&1; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned to the build that lies on this machine's disk (see README).
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -e ".[test,rtx,serve,ray]" 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/python -c "import algm_export" 
