#!/usr/bin/env bash
# One short GPU lease, end to end: training data, training from the bundled checkpoint under a
# time limit, export, and the GPU reconstruction latency. Everything it keeps goes to $OUT.
#
#   OUT=/tmp/gpu-out bash services/trainer/gpu_session.sh
#
# The defaults are the second H200 lease's (2026-11-26, stage 3 of the bundled checkpoint): 562 s
# in all, so one call fits a 15-minute lease with the machine's start. Keep the whole log under
# $OUT (tee, as below): output piped through a filter such as grep is held in its buffer and lost
# when the call runs past its limit.
#
# BUDGET_S is the whole script's wall time; training gets what the other steps leave
# (RESERVE_S is kept for export and the latency benchmark). PHANTOMS, PREPARE_S (a cap on data
# preparation: what is finished by then is used), POINTS (samples of each kind per volume:
# training draws a few thousand per step, and fewer samples prepare faster), DEVICE and
# LATENCY_REPEATS (0: no latency benchmark) can be overridden for a dry run.
#
# On a bare machine whose python3 has torch and the scientific stack, carry the rest as wheels in
# .whl/ (bench/gpu_wheels.sh, here); bench/device_setup.sh installs them and heartvec itself
# into /tmp/site. From the repository root:
#   set -o pipefail; OUT=... bash services/trainer/gpu_session.sh 2>&1 | tee "$OUT/log.txt"
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/device_setup.sh
source bench/device_setup.sh
OUT=${OUT:?set OUT to a folder for the results}
BUDGET_S=${BUDGET_S:-530}
RESERVE_S=${RESERVE_S:-100}
PHANTOMS=${PHANTOMS:-300}
PREPARE_S=${PREPARE_S:-75}
POINTS=${POINTS:-40000}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-15}
CONFIG=${CONFIG:-services/trainer/configs/small-phantoms-gpu.yaml}
DATA=${DATA:-/tmp/heartvec-data}
RUN=${RUN:-/tmp/heartvec-run}
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-20} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
started=$SECONDS

heartvec phantom "$DATA/volumes" --count "$PHANTOMS" --seed 1000 --size 128 --spacing 2.0
timeout "$PREPARE_S" heartvec prepare "$DATA/volumes" --out "$DATA/prepared" --workers "$WORKERS" \
  --surface-points "$POINTS" --vol-points "$POINTS" --near-points "$POINTS" \
  || echo "prepare stopped at ${PREPARE_S} s: training on what was finished"
find "$DATA/prepared" -name "*.npz" | wc -l
heartvec split "$DATA/prepared" --val-fraction 0.1 --seed 0

train_s=$((BUDGET_S - (SECONDS - started) - RESERVE_S))
echo "training for ${train_s} s"
heartvec train --data "$DATA/prepared" --out "$RUN" --config "$CONFIG" --device "$DEVICE" \
  --init-from shared/heartvec/checkpoints/heartvec-small.pt --time-limit "$train_s"
# both: on the CPU run of the bundled checkpoint the last (low learning rate) beat the
# best-validation one on unseen phantoms; compare them by Dice before shipping either
heartvec export-checkpoint "$RUN/checkpoint-last.pt" "$OUT/heartvec-small.pt"
heartvec export-checkpoint "$RUN/checkpoint-best.pt" "$OUT/heartvec-small-best.pt"
cp "$RUN/history.json" "$RUN/training_curve.png" "$OUT/"

if [ "${LATENCY_REPEATS:-1}" -gt 0 ]; then
  python3 bench/reconstruct.py --checkpoint "$OUT/heartvec-small.pt" --device "$DEVICE" \
    --latency-only --repeats "${LATENCY_REPEATS:-1}"
  cp bench/results/reconstruct_latency_"${DEVICE%%:*}".json "$OUT/"
fi
echo "done in $((SECONDS - started)) s"
