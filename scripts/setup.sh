#!/usr/bin/env bash
# Create .venv with the runtime, the exporter, the server, Ray, NNCF, the demo models and the
# test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -e ".[export,openvino,onnxruntime,serve,ray,int8,demo,peers,dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import reciprocam_ir, export, torch, openvino, onnxruntime" \
  || { echo "setup.sh: the environment is incomplete" >&2; exit 1; }
