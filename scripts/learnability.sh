#!/usr/bin/env bash
# The one command behind checkpoints/tiny-synthetic: runs its recipe, research/recipes/tiny_synthetic.yaml
# (two runs of research.learnability from random initialisation, seed 0; OUT/final/model is the checkpoint).
# usage: bash scripts/learnability.sh [OUT] [more research.learnability settings, given to every run]
#   OUT defaults to out/learn; DEVICE (default cuda) and PYTHON (default python) come from the environment.
#   With --max-minutes M a run that stops early exits 75 (saved): the same command again continues it, and a
#   complete run is loaded, not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/learn}
shift $(($# > 0 ? 1 : 0))
python=${PYTHON:-python}
device=${DEVICE:-cuda}

exec "$python" -m research.recipe research/recipes/tiny_synthetic.yaml --out "$out" --device "$device" "$@"
