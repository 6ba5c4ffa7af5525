#!/usr/bin/env bash
# Every GPU-only path of heartvec, in one call of a lent GPU machine (sized for about 7 minutes on
# one H200, the wheels' install included):
#   ddp        two ranks on the one GPU (HEARTVEC_DIST_BACKEND=gloo), stopped by SIGUSR1 through
#              torchrun as train.sbatch does it, then resumed to the end
#   sigterm    one CUDA process stopped by SIGTERM (exit 75 within 60 s), resumed (CUDA RNG states)
#   evaluate   `heartvec evaluate` and `export-checkpoint` of that run, a reconstruction with it
#   bench      bench/train.py's GPU rows (throughput, peak memory; `base, 2, autograd` included)
#   reconstruct  `heartvec reconstruct --device cuda` with the bundled checkpoint, defaults, and
#              with `--precision bf16` (the refinement's steps in bf16 too); and the encoder
#              alone after a 48-frame search (`--frame-search 48`: its stage's time)
#   service    a job through `heartvec serve --embedded` on the GPU, upload to succeeded
#   realct     bench/real_ct.py on the GPU: the real subjects' scans and heart crops against a
#              256^3 phantom (carry the data: REAL_DATA=folder, default ../shared/data)
# Everything goes to $OUT: summary.txt (a line per check: PASS/FAIL, seconds, figures),
# gpu_check.log (the whole output) and results.tar.gz (reports, histories, bench/results JSON
# and PNG, BENCHMARKS.md as bench/train.py rewrote it).
#
#   bash bench/gpu_wheels.sh                     # here, before the call: .whl/ (about 40 MB)
#   device run, carry [".whl"], timeout_s 540:   OUT=$OUT bash bench/gpu_check.sh
#   dry run on a CPU:                            DEVICE=cpu QUICK=1 OUT=/tmp/gpu-check bash bench/gpu_check.sh
# CHECKS="ddp sigterm ..." runs some of them.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:?set OUT to a folder for the results}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
CHECKS=${CHECKS:-ddp sigterm evaluate bench reconstruct service realct}
REAL_DATA=${REAL_DATA:-../shared/data}
WORK=${WORK:-/tmp/heartvec-gpu-check}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}
rm -rf "$WORK" && mkdir -p "$OUT" "$WORK/keep"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

# shellcheck source=bench/device_setup.sh
source bench/device_setup.sh || exit 1
{
    date -u +%FT%TZ
    nvidia-smi -L || true
    nproc
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$WORK/keep/machine.txt"

if [ "$QUICK" = 1 ]; then  # a CPU dry run of the same steps
    PRESET=tiny PHANTOMS=6 SIZE=64 SPACING=3.5 POINTS=4000 BATCH=2 REPEATS=2 RESOLUTION=64
    REFINE=20
else
    PRESET=small PHANTOMS=16 SIZE=96 SPACING=2.5 POINTS=20000 BATCH=8 REPEATS=30
    RESOLUTION=256 REFINE=400
fi
DATA=$WORK/data
CONFIG=$WORK/config.yaml
cat >"$CONFIG" <<YAML
preset: $PRESET
train: {epochs: 4, batch_size: $BATCH, repeats: $REPEATS, val_every: 2, workers: 3}
YAML
EPOCHS=4
note=""
started=$SECONDS

check() {  # NAME: run check_NAME, time it, write its line to the summary
    local name=$1 begun=$SECONDS result
    echo "=== $name"
    if "check_$name"; then result=PASS; else result=FAIL; fi
    echo "$name: $result in $((SECONDS - begun)) s${note:+: $note}" | tee -a "$OUT/summary.txt"
    note=""
}
wait_for() {  # FILE SECONDS
    local deadline=$((SECONDS + $2))
    until [ -e "$1" ]; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}
state() {  # CHECKPOINT: "epoch step epoch_batches"
    python3 -c "from heartvec.model.checkpoint import load_checkpoint as l; s = l('$1'); \
print(s['epoch'], s['step'], s.get('epoch_batches', 0))"
}
json() {  # FILE EXPRESSION on j
    python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"
}

heartvec phantom "$DATA/volumes" --count "$PHANTOMS" --seed 3000 --size "$SIZE" \
    --spacing "$SPACING" || exit 1
heartvec prepare "$DATA/volumes" --out "$DATA/prepared" --workers "$(($(nproc) - 1))" \
    --surface-points "$POINTS" --vol-points "$POINTS" --near-points "$POINTS" || exit 1
heartvec split "$DATA/prepared" --val-fraction 0.25 || exit 1
echo "data: $PHANTOMS phantoms prepared in $((SECONDS - started)) s"

check_ddp() {  # two ranks on one device, stop signals forwarded by torchrun
    local run=$WORK/ddp pid status signalled stopped resumed
    # shellcheck disable=SC2054  # the commas are torchrun's list of signals
    local train=(torchrun --standalone --nproc-per-node 2 --shutdown-timeout 120
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --no-python heartvec train
        --data "$DATA/prepared" --out "$run" --config "$CONFIG" --device "$DEVICE")
    HEARTVEC_DIST_BACKEND=gloo "${train[@]}" &  # a simple command: $! is torchrun itself
    pid=$!
    wait_for "$run/checkpoint-last.pt" 300 || { kill "$pid"; return 1; }
    sleep 1
    kill -USR1 "$pid"
    signalled=$SECONDS
    wait "$pid"
    status=$?
    stopped=$(state "$run/checkpoint-last.pt")
    note="stopped $((SECONDS - signalled)) s after SIGUSR1 (torchrun status $status) at epoch,step,batch $stopped"
    [ "${stopped%% *}" -lt "$EPOCHS" ] || return 1
    HEARTVEC_DIST_BACKEND=gloo "${train[@]}" --resume || return 1
    resumed=$(state "$run/checkpoint-last.pt")
    cp "$run/history.json" "$WORK/keep/ddp_history.json"
    note="$note; resumed to $resumed, val mean IoU $(json "$run/history.json" 'round(j[-1]["val"]["mean_iou"], 3)')"
    [ "${resumed%% *}" -eq "$EPOCHS" ]
}

check_sigterm() {
    local run=$WORK/single pid status signalled waited
    heartvec train --data "$DATA/prepared" --out "$run" --config "$CONFIG" --device "$DEVICE" &
    pid=$!
    wait_for "$run/checkpoint-last.pt" 300 || { kill "$pid"; return 1; }
    sleep 1
    kill -TERM "$pid"
    signalled=$SECONDS
    wait "$pid"
    status=$?
    waited=$((SECONDS - signalled))
    note="exit $status ${waited} s after SIGTERM at epoch,step,batch $(state "$run/checkpoint-last.pt")"
    [ "$status" -eq 75 ] && [ "$waited" -lt 60 ] || return 1
    heartvec train --data "$DATA/prepared" --out "$run" --config "$CONFIG" --device "$DEVICE" \
        --resume || return 1
    note="$note; resumed to $(state "$run/checkpoint-last.pt")"
    cp "$run/history.json" "$WORK/keep/single_history.json"
}

check_evaluate() {
    local run=$WORK/single
    heartvec evaluate --checkpoint "$run/checkpoint-best.pt" --data "$DATA/prepared" \
        --device "$DEVICE" >"$WORK/keep/evaluate.json" || return 1
    heartvec export-checkpoint "$run/checkpoint-last.pt" "$WORK/exported.pt" || return 1
    heartvec reconstruct "$DATA/volumes/phantom_s3000.nii.gz" --out "$WORK/exported-recon" \
        --checkpoint "$WORK/exported.pt" --device "$DEVICE" --resolution 96 --refine-steps 50 \
        || return 1
    note="val mean IoU $(json "$WORK/keep/evaluate.json" 'round(j["mean_iou"], 3)');"
    note="$note exported checkpoint reconstructs (mean Dice"
    note="$note $(json "$WORK/exported-recon/report.json" 'round(j["summary"]["mean_dice"], 3)'))"
}

check_bench() {
    if [ "$QUICK" = 1 ]; then  # one row, leaving BENCHMARKS.md alone
        python3 bench/train.py --one tiny 2 autograd --steps 1 --activation-checkpointing \
            >"$WORK/keep/bench_one.json" || return 1
        note="tiny 2 autograd with activation checkpointing ran"
        return
    fi
    python3 bench/train.py || return 1
    local name=train_cpu
    [ "${DEVICE%%:*}" = cuda ] && name=train_gpu
    cp "bench/results/$name.json" "bench/results/$name.png" BENCHMARKS.md "$WORK/keep/"
    note=$(python3 - "bench/results/$name.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["runs"]
done = lambda r: f"{r['shapes_per_s']:.0f}/s {r['peak_memory_mb']} MB" if "error" not in r else "failed"
print("; ".join(f"{r['preset']} {r['batch']} {r['eikonal']}: {done(r)}" for r in rows))
PY
)
    ! grep -q '"error"' "bench/results/$name.json"
}

check_reconstruct() {
    local out=$WORK/recon
    heartvec reconstruct "$DATA/volumes/phantom_s3001.nii.gz" --out "$out" --device "$DEVICE" \
        --resolution "$RESOLUTION" --refine-steps "$REFINE" || return 1
    cp "$out/report.json" "$WORK/keep/reconstruct_report.json"
    note="mean Dice $(json "$out/report.json" 'round(j["summary"]["mean_dice"], 3)'),"
    note="$note pipeline $(json "$out/report.json" 'j["timings"]["total_s"]') s,"
    note="$note refine $(json "$out/report.json" 'j["timings"]["refine_s"]') s"
    # the refinement's steps under bf16 autocast (--precision bf16; on a CPU 0.69x the time):
    # in 'graph' mode on a GPU never measured before
    heartvec reconstruct "$DATA/volumes/phantom_s3001.nii.gz" --out "$WORK/bf16" --device "$DEVICE" \
        --resolution "$RESOLUTION" --refine-steps "$REFINE" --precision bf16 || return 1
    cp "$WORK/bf16/report.json" "$WORK/keep/reconstruct_bf16_report.json"
    note="$note; --precision bf16: mean Dice"
    note="$note $(json "$WORK/bf16/report.json" 'round(j["summary"]["mean_dice"], 3)'),"
    note="$note refine $(json "$WORK/bf16/report.json" 'j["timings"]["refine_s"]') s"
    note="$note ($(json "$WORK/bf16/report.json" 'j["refinement"]["step_mode"]'),"
    note="$note $(json "$WORK/bf16/report.json" 'j["refinement"]["precision"]'))"
    # the frame search on the device: 48 frames before the encoder alone
    heartvec reconstruct "$DATA/volumes/phantom_s3001.nii.gz" --out "$WORK/framed" \
        --device "$DEVICE" --resolution "$RESOLUTION" --refine-steps 0 --frame-search 48 || return 1
    cp "$WORK/framed/report.json" "$WORK/keep/frame_search_report.json"
    note="$note; --frame-search 48 alone: mean Dice"
    note="$note $(json "$WORK/framed/report.json" 'round(j["summary"]["mean_dice"], 3)'),"
    note="$note frame stage $(json "$WORK/framed/report.json" 'j["timings"]["frame_s"]') s"
}

check_service() {
    local port=18765 pid
    HEARTVEC_STORAGE_DIR=$WORK/service HEARTVEC_DEVICE=$DEVICE \
        heartvec serve --embedded --host 127.0.0.1 --port "$port" >"$WORK/keep/service.log" 2>&1 &
    pid=$!
    python3 - "$port" "$DATA/volumes/phantom_s3002.nii.gz" "$RESOLUTION" "$REFINE" \
        >"$WORK/keep/service_job.json" <<'PY'
import json, sys, time
import httpx
port, volume, resolution, refine = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 180
while True:
    try:
        if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        sys.exit("the embedded service did not start in 180 s")
    time.sleep(0.5)
started = time.monotonic()
with open(volume, "rb") as f:
    answer = httpx.post(f"{base}/reconstruct", files={"file": f},
                        data={"resolution": resolution, "refine_steps": refine}, timeout=60)
answer.raise_for_status()
job = answer.json()["id"]
while True:
    state = httpx.get(f"{base}/jobs/{job}", timeout=10).json()
    if state["status"] in ("succeeded", "failed", "cancelled"):
        break
    time.sleep(0.05)
state["upload_to_done_s"] = round(time.monotonic() - started, 2)
print(json.dumps(state))
sys.exit(0 if state["status"] == "succeeded" else 1)
PY
    local status=$?
    kill "$pid"
    wait "$pid"
    [ $status -eq 0 ] || return 1
    note="job succeeded $(json "$WORK/keep/service_job.json" 'j["upload_to_done_s"]') s after"
    note="$note upload, mean Dice"
    note="$note $(json "$WORK/keep/service_job.json" 'round(j["metrics"]["summary"]["mean_dice"], 3)')"
}

check_realct() {
    local quick=()
    [ "$QUICK" = 1 ] && quick=(--resolution "$RESOLUTION" --refine-steps "$REFINE")
    python3 bench/real_ct.py --device "$DEVICE" --repeats 1 --data "$REAL_DATA" "${quick[@]}" \
        | tee "$WORK/keep/real_ct_rows.jsonl" || return 1
    note=$(python3 - "$WORK/keep/real_ct_rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(", ".join(f"{r['case']} {r['timings']['total_s']} s" for r in rows))
PY
)
    [ "$QUICK" = 1 ] || cp bench/results/real_ct_* BENCHMARKS.md "$WORK/keep/"
}

for name in $CHECKS; do
    check "$name"
done
tar -C "$WORK/keep" -czf "$OUT/results.tar.gz" .
echo "gpu_check: done in $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
! grep -q ": FAIL" "$OUT/summary.txt"
