#!/usr/bin/env bash
# The GPU suite: every test marked `gpu` (tests/gpu/), on a host with a CUDA device, from a fresh clone.
#
# Runs under the Python in $PYTHON (default: python3), which must hold a CUDA build of torch (the CPU
# install of scripts/install.sh has none). Dependencies missing from it are installed with pip first:
# sam2 1.1.0 from source without compiling its CUDA extension and without re-resolving torch (as in
# scripts/install.sh), then requirements.txt, whose list pins no torch. Set VRSHQ_GPU_NO_INSTALL=1 to
# only check. Extra arguments go to pytest, e.g. `bash scripts/gpu_tests.sh -k tracking`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device: the GPU suite needs a GPU host and a CUDA build of torch")
print(f"GPU suite on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
if ! "$PY" -c 'import sam2, ray, transformers, pyarrow, cv2, hydra, pytest' 2>/dev/null; then
  if [ "${VRSHQ_GPU_NO_INSTALL:-0}" = 1 ]; then
    echo "missing dependencies and VRSHQ_GPU_NO_INSTALL=1: install requirements.txt and sam2==1.1.0" >&2
    exit 2
  fi
  "$PY" -m pip install -q --disable-pip-version-check setuptools wheel
  "$PY" -c 'import sam2' 2>/dev/null \
    || SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation sam2==1.1.0
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
exec "$PY" -m pytest -q -p no:cacheprovider -m gpu -rA --durations=10 tests/gpu "$@"
