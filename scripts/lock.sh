#!/usr/bin/env bash
# Regenerate the lock files from setup.cfg: requirements/lock.txt (everything scripts/setup.sh
# installs) and requirements/serve.txt (the serve image, Dockerfile). Python 3.11, Linux x86_64,
# every distribution pinned with its hashes. Run it to move the environment forward, then
# `bash scripts/setup.sh` and the whole test suite before committing the new lock
# (docs/environment.md). Extra arguments go to `uv pip compile` (e.g. --upgrade-package ray).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv_env.sh
DEV_EXTRAS=(export openvino onnxruntime serve ray int8 demo peers dev)
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
        --no-header --annotation-style line --quiet)
"$UV" pip compile setup.cfg "${DEV_EXTRAS[@]/#/--extra=}" "${common[@]}" "$@" \
  -o requirements/lock.txt
# The serve image takes the same versions as the tested environment.
"$UV" pip compile setup.cfg --extra=serve --constraint requirements/lock.txt "${common[@]}" \
  -o requirements/serve.txt
echo "lock.sh: wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins) and" \
     "requirements/serve.txt ($(grep -c '==' requirements/serve.txt) pins)"
