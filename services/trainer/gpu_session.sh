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
# LATENCY_REPEATS (0: no latency benchmark), TRAIN_S (training seconds instead of what the budget
# leaves) and HELD_OUT_RESOLUTION (default 256) can be overridden for a dry run.
#
# Real anatomy (issue 23): REAL=FILE (a real subject's label volume, REAL_LABELS its table, default
# mmwhs) makes REAL_COUNT training hearts from it with `heartvec augment` (seeds from REAL_SEED,
# WORKERS processes) beside the PHANTOMS phantoms (seeds from PHANTOM_SEED); HELD_OUT=FILE
# (HELD_OUT_LABELS, default mmwhs-raw) is a real subject the run never sees: the checkpoint alone
# (--refine-steps 0) is measured on it before training (INIT) and after (last and best), each
# report under $OUT/held_out_*. ../shared does not travel to the device: copy the two subjects
# into an ignored folder of the checkout and carry it, e.g. (subject A trains, B is held out)
#   mkdir -p .carry && cp ../shared/data/*.nii.gz .carry/   # .carry/ is in .gitignore
#   OUT=... REAL=.carry/whole_heart_mmwhs_labels.nii.gz REAL_COUNT=160 PHANTOMS=160 \
#     PHANTOM_SEED=2000 HELD_OUT=.carry/second_heart_mmwhs_raw_labels.nii.gz \
#     CONFIG=services/trainer/configs/small-real-gpu.yaml bash services/trainer/gpu_session.sh
# SCALE_MM (default 100, the bundled checkpoint's) is the training frame's mm per normalized unit:
# the checkpoint alone reads about +0.01 mean Dice on real hearts and unseen phantoms when the
# heart is drawn ~10% larger (BENCHMARKS, "Frame search in reconstruct"); training at 90 on the
# CPU (0.84 h) gave nothing over 100 (BENCHMARKS, "The frame's scale, trained and set"), a long
# GPU run is untried. The trained checkpoint records it and reconstructions use it.
# STRENGTH (default 1) is `heartvec augment --strength`: how far the hearts made from REAL depart
# from it; 1.75 lost on real hearts in a CPU run (BENCHMARKS, "The checkpoint alone against
# training: strength175").
# INIT is the checkpoint training starts from (default the bundled one). Besides the last and
# the best checkpoints it exports the average of the last AVERAGE (4) snapshots taken every
# SNAPSHOT_S (60) seconds, heartvec-small-average.pt, measured on HELD_OUT like the others.
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
SCALE_MM=${SCALE_MM:-100}
STRENGTH=${STRENGTH:-1}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-15}
CONFIG=${CONFIG:-services/trainer/configs/small-phantoms-gpu.yaml}
DATA=${DATA:-/tmp/heartvec-data}
RUN=${RUN:-/tmp/heartvec-run}
INIT=${INIT:-shared/heartvec/checkpoints/heartvec-small.pt}
PHANTOM_SEED=${PHANTOM_SEED:-1000}
REAL=${REAL:-}
REAL_LABELS=${REAL_LABELS:-mmwhs}
REAL_COUNT=${REAL_COUNT:-0}
REAL_SEED=${REAL_SEED:-10000}
HELD_OUT=${HELD_OUT:-}
HELD_OUT_LABELS=${HELD_OUT_LABELS:-mmwhs-raw}
SNAPSHOT_S=${SNAPSHOT_S:-60}
AVERAGE=${AVERAGE:-4}
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-20} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
started=$SECONDS

# the checkpoint alone on the held-out subject: mean Dice and HD95 from report.json
held_out() {  # CHECKPOINT NAME
  [ -n "$HELD_OUT" ] || return 0
  heartvec reconstruct "$HELD_OUT" --labels "$HELD_OUT_LABELS" --checkpoint "$1" \
    --device "$DEVICE" --refine-steps 0 --resolution "${HELD_OUT_RESOLUTION:-256}" \
    --out "$OUT/held_out_$2" >"$OUT/held_out_$2.log" 2>&1
  python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["summary"]
dice, hd95 = s["mean_dice"], s["mean_hd95_mm"]
print(f"held out, {sys.argv[2]}: the checkpoint alone mean Dice {dice:.3f}, HD95 {hd95:.2f} mm")' \
    "$OUT/held_out_$2/report.json" "$2"
}

held_out "$INIT" init
if [ -n "$REAL" ] && [ "$REAL_COUNT" -gt 0 ]; then
  OMP_NUM_THREADS=1 heartvec augment "$REAL" --labels "$REAL_LABELS" --count "$REAL_COUNT" \
    --seed "$REAL_SEED" --strength "$STRENGTH" --workers "$WORKERS" --out "$DATA/volumes"
  echo "$(find "$DATA/volumes" -name "*_aug_s*" | wc -l) hearts made from $REAL"
fi
heartvec phantom "$DATA/volumes" --count "$PHANTOMS" --seed "$PHANTOM_SEED" --size 128 --spacing 2.0
timeout "$PREPARE_S" heartvec prepare "$DATA/volumes" --out "$DATA/prepared" --workers "$WORKERS" \
  --surface-points "$POINTS" --vol-points "$POINTS" --near-points "$POINTS" --scale-mm "$SCALE_MM" \
  || echo "prepare stopped at ${PREPARE_S} s: training on what was finished"
find "$DATA/prepared" -name "*.npz" | wc -l
heartvec split "$DATA/prepared" --val-fraction 0.1 --seed 0

train_s=${TRAIN_S:-$((BUDGET_S - (SECONDS - started) - RESERVE_S))}
echo "training for ${train_s} s"
# snapshots of checkpoint-last.pt every SNAPSHOT_S seconds (each new one once): the last AVERAGE
# of them are averaged into a third candidate (on the CPU run trained on hearts made from real B
# the average gained 0.01-0.04 on unseen phantoms, on real hearts nothing beyond float16's
# rounding: BENCHMARKS, "The checkpoint alone against training: reverse_average")
mkdir -p "$RUN/snapshots"
snapshot() {
  local last="$RUN/checkpoint-last.pt" newest
  newest=$(find "$RUN/snapshots" -name "*.pt" | sort | tail -n 1)
  if [ -f "$last" ] && { [ -z "$newest" ] || [ "$last" -nt "$newest" ]; }; then
    cp "$last" "$RUN/snapshots/.partial" && mv "$RUN/snapshots/.partial" \
      "$RUN/snapshots/$(date +%s%N).pt"
  fi
}
(while sleep "$SNAPSHOT_S"; do snapshot; done) &
snapshots_pid=$!
heartvec train --data "$DATA/prepared" --out "$RUN" --config "$CONFIG" --device "$DEVICE" \
  --init-from "$INIT" --time-limit "$train_s"
kill "$snapshots_pid"
wait "$snapshots_pid" 2>/dev/null || true
snapshot
# both: on the CPU run of the bundled checkpoint the last (low learning rate) beat the
# best-validation one on unseen phantoms; compare them by Dice before shipping either
heartvec export-checkpoint "$RUN/checkpoint-last.pt" "$OUT/heartvec-small.pt"
heartvec export-checkpoint "$RUN/checkpoint-best.pt" "$OUT/heartvec-small-best.pt"
cp "$RUN/history.json" "$RUN/training_curve.png" "$OUT/"
held_out "$OUT/heartvec-small.pt" last
held_out "$OUT/heartvec-small-best.pt" best
mapfile -t averaged < <(find "$RUN/snapshots" -name "*.pt" | sort | tail -n "$AVERAGE")
if [ "${#averaged[@]}" -ge 2 ]; then
  heartvec export-checkpoint "${averaged[@]}" "$OUT/heartvec-small-average.pt"
  held_out "$OUT/heartvec-small-average.pt" average
fi

if [ "${LATENCY_REPEATS:-1}" -gt 0 ]; then
  python3 bench/reconstruct.py --checkpoint "$OUT/heartvec-small.pt" --device "$DEVICE" \
    --latency-only --repeats "${LATENCY_REPEATS:-1}"
  cp bench/results/reconstruct_latency_"${DEVICE%%:*}".json "$OUT/"
fi
echo "done in $((SECONDS - started)) s"
