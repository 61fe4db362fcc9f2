#!/usr/bin/env bash
# The README's demo command: sets up .venv if needed, then runs the end-to-end demo job
# (synthetic videos -> Ray Data inference -> masks/scores Parquet -> report). Extra arguments go to
# `python -m jobs.demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c 'import vrshq, sam2, ray' 2>/dev/null || bash scripts/install.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m jobs.demo "$@"
