#!/usr/bin/env bash
# The README's test command: sets up the environment if needed, then runs the whole suite on CPU in one
# pytest process. Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c 'import vrshq, sam2, ray' 2>/dev/null || bash scripts/install.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
