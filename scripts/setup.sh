#!/usr/bin/env bash
# Create .venv from the lock file: the runtime, the exporter, the server, Ray, NNCF, the demo
# models and the test tools, every distribution at the version and hash in
# requirements/lock.txt, then this project on top (editable, no dependencies of its own).
# The lock is made from setup.cfg by scripts/lock.sh (docs/environment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
LOCK=requirements/lock.txt
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv installs the lock; it comes from the lock too (its pin and hashes), through pip.
uv_pin=$(grep -m1 '^uv==' "$LOCK" | cut -d' ' -f1)
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "${uv_pin#uv==}" ]; then
  awk '/^uv==/ {p = 1} p && !/^ *(uv==|--hash)/ {exit} p' "$LOCK" > .venv/uv-requirement.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    --no-deps -r .venv/uv-requirement.txt 2> >(grep -v "^WARNING: Location" >&2)
fi
source scripts/uv_env.sh
"$UV" pip sync --quiet --python .venv/bin/python --require-hashes "$LOCK"
"$UV" pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
.venv/bin/python -c "import reciprocam_ir, export, torch, openvino, onnxruntime" \
  || { echo "setup.sh: the environment is incomplete" >&2; exit 1; }
