# Sourced by setup.sh and lock.sh: the uv to use, and the package indexes pip is configured with
# on this machine (its config files and PIP_* variables), passed on to uv, which reads neither.
UV=${UV:-.venv/bin/uv}
pip_setting() {
  local from_env=$1 key=$2
  if [ -n "${!from_env:-}" ]; then echo "${!from_env}"; return; fi
  "${PYTHON:-python3.11}" -m pip config get "$key" 2>/dev/null || true
}
extra_index=$(pip_setting PIP_EXTRA_INDEX_URL global.extra-index-url | tr '\n' ' ' | xargs)
find_links=$(pip_setting PIP_FIND_LINKS global.find-links | tr '\n' ' ' | xargs)
if [ -n "${extra_index// /}" ]; then export UV_EXTRA_INDEX_URL=${UV_EXTRA_INDEX_URL:-$extra_index}; fi
if [ -n "${find_links// /}" ]; then export UV_FIND_LINKS=${UV_FIND_LINKS:-$find_links}; fi
# The same release may sit in several of those indexes (a local mirror and PyPI).
export UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
