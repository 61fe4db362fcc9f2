#!/usr/bin/env bash
# Creates .venv and installs vrshq with every dependency, in the one order that keeps a CPU torch.
#
# Why the order matters (checked on the project's machines):
#  1. torch first, pinned: a looser spec pulls a multi-GB CUDA build.
#  2. sam2 1.1.0 ships only as a source archive; its build must see the torch already installed
#     (--no-build-isolation) and must not compile CUDA (SAM2_BUILD_CUDA=0). It is installed with
#     --no-deps because its torchvision requirement cannot load beside the CPU torch, and a broken
#     torchvision also breaks transformers imports; sam2's video predictor does not need torchvision.
#  3. everything else (requirements.txt), then vrshq itself, editable, without re-resolving.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${VRSHQ_TORCH_SPEC:-torch==2.13.0}

pip_install() {  # pip, quiet, without the local-index noise; keeps pip's exit status
  local rc
  # Filtered: the local-index noise, and pip's (expected) complaint that sam2 wants torchvision.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 \
    | grep -v -e 'is ignored' -e 'requires torchvision' -e "dependency resolver does not currently" || true
  rc=${PIPESTATUS[0]}
  return "$rc"
}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -c 'import torch' 2>/dev/null || pip_install "$TORCH_SPEC"
pip_install setuptools wheel
.venv/bin/python -c 'import sam2' 2>/dev/null || SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation sam2==1.1.0
pip_install -r requirements.txt
pip_install --no-deps --no-build-isolation -e .
.venv/bin/python - <<'PY'
import torch, sam2, ray, transformers, decord, pycocotools, s3fs  # noqa: F401
print(f"vrshq environment ready: torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}")
PY
