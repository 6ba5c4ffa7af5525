#!/usr/bin/env bash
# GPU reconstruction latency on a lent machine, in one call: `bench/reconstruct.py --latency-only`
# (separate `heartvec reconstruct` processes, and band vs dense decoding) and
# `bench/profile_reconstruct.py` (in one process: cold, then as a worker with the model and the
# host pool kept; refinement as a CUDA graph and eagerly; with the pool and without; cProfile). What it keeps goes to $OUT: the log, and results.tar.gz with the latency JSON,
# BENCHMARKS.md as the benchmark rewrote it and the profiles.
#
#   OUT=/tmp/gpu-out bash bench/gpu_latency.sh
#
# On a bare machine whose python3 has torch and the scientific stack, carry the rest as wheels in
# .whl/ (bench/gpu_wheels.sh): bench/device_setup.sh installs them and heartvec into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:?set OUT to a folder for the results}
DEVICE=${DEVICE:-cuda}
REPEATS=${REPEATS:-3}  # heartvec reconstruct processes
# VARIANTS=1: also the worker's runs with eager refinement steps and without the host pool;
# PROFILE=0: without the cProfile runs
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/keep"
# shellcheck source=bench/device_setup.sh
source bench/device_setup.sh || exit 1
{ nvidia-smi -L || true; nproc; lscpu | grep 'Model name' || true; python3 -c \
  "import torch, numpy, skimage; print(torch.__version__, numpy.__version__, skimage.__version__)"
} 2>&1 | tee "$OUT/keep/machine.txt"
started=$SECONDS
python3 bench/reconstruct.py --device "$DEVICE" --latency-only --repeats "$REPEATS"
cp bench/results/reconstruct_latency_"${DEVICE%%:*}".json BENCHMARKS.md "$OUT/keep/"
echo "latency benchmark: $((SECONDS - started)) s"
# in one process: cold, then as a worker (model and host pool kept); the refinement's steps as
# a CUDA graph and eagerly; with the host pool and without
python3 bench/profile_reconstruct.py --device "$DEVICE" --no-profile --runs 4 --out "$OUT/keep/warm"
if [ "${VARIANTS:-0}" = 1 ]; then
  python3 bench/profile_reconstruct.py --device "$DEVICE" --no-profile --runs 3 \
    --refine-step-mode eager --out "$OUT/keep/warm-eager"
  HEARTVEC_HOST_WORKERS=0 python3 bench/profile_reconstruct.py --device "$DEVICE" --no-profile \
    --runs 3 --out "$OUT/keep/warm-no-pool"
fi
if [ "${PROFILE:-1}" = 1 ]; then
  python3 bench/profile_reconstruct.py --device "$DEVICE" --runs 2 --out "$OUT/keep/profile"
fi
tar -C "$OUT/keep" -czf "$OUT/results.tar.gz" . && rm -rf "$OUT/keep"
echo "done in $((SECONDS - started)) s"
