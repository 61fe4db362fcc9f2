#!/usr/bin/env bash
# The one command behind checkpoints/tiny-synthetic: trains it from random initialisation with seed 0, in two
# runs of jobs.learnability (docs/research/learnability.md):
#   OUT/base   learn-256-pos: stage 0 (SAM2 learns to track), stage G, stage 1. Only its SAM2 is used below;
#              this run alone is the previous committed checkpoint (git 37ece17).
#   OUT/final  learn-256-pos-p4: stage V, stage G with the motion curriculum, stage 1 on base's SAM2
#              (--sam2-init). OUT/final/model is the committed checkpoint.
# usage: bash scripts/learnability.sh [OUT] [more jobs.learnability settings, given to both runs]
#   OUT defaults to out/learn; DEVICE (default cuda) and PYTHON (default python) come from the environment.
#   With --max-minutes M a run that stops early exits 75 (saved): the same command again continues it, and a
#   complete run is loaded, not retrained.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/learn}
shift $(($# > 0 ? 1 : 0))
python=${PYTHON:-python}
device=${DEVICE:-cuda}

"$python" -m jobs.learnability --device "$device" --preset learn-256-pos --track.attribute-weight 1 \
    --track.steps 3200 --grounding.steps 1500 --steps 1200 --seed 0 --expression-word-weight 1 --ema-decay 0.999 \
    --data-workers 3 --threads 4 --heldout-videos 32 --eval-every 500 --out "$out/base" "$@"

"$python" -m jobs.learnability --device "$device" --preset learn-256-pos-p4 --sam2-init "$out/base/model" \
    --vision.steps 600 --grounding.steps 3600 --grounding.lr-schedule constant --grounding.videos-per-step 256 \
    --grounding.focus-kinds static --grounding.focus-kinds fastest --grounding.focus-kinds moving \
    --grounding.focus-share 1 --grounding.focus-steps 1642 --grounding.focus-share-after 0.5 \
    --grounding.eval-every 200 --grounding.heldout-videos 384 --grounding.target-loss bce --steps 1200 --seed 0 \
    --expression-word-weight 1 --ema-decay 0.999 --data-workers 12 --threads 4 --heldout-videos 32 \
    --eval-every 600 --out "$out/final" "$@"
