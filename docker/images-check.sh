#!/usr/bin/env bash
# `make images-check`: the images built by `make images`, run end to end with buildah (chroot
# isolation; containers share this machine's network):
#   - the api image serving on a free port, the worker image taking jobs, both against this
#     machine's Postgres (a database made for the check) and Redis, one storage folder;
#   - a phantom uploaded to the API's port, the job followed until it succeeds in the worker,
#     its results downloaded and read;
#   - in the trainer image: `heartvec prepare`, `split` and one tiny training epoch, the test of
#     apptainer/trainer.def, the error for an output folder its user cannot write, and, with
#     fcpw's system library removed, the error naming it.
# Prints one summary line. Needs root (buildah), psql, curl and python3.
#   HEARTVEC_IMAGE_TAG (dev), HEARTVEC_CHECK_PG (postgresql://postgres@127.0.0.1:5432),
#   HEARTVEC_CHECK_REDIS (redis://127.0.0.1:6379/13: a database the check empties)
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${HEARTVEC_IMAGE_TAG:-dev}
PG=${HEARTVEC_CHECK_PG:-postgresql://postgres@127.0.0.1:5432}
REDIS=${HEARTVEC_CHECK_REDIS:-redis://127.0.0.1:6379/13}
started=$SECONDS
database=heartvec_images_check_$$
work=$(mktemp -d "${TMPDIR:-/var/tmp}/heartvec-images-check.XXXXXX")
chmod 0777 "$work"  # the containers run as uid 1000
mkdir -m 0777 "$work/storage" "$work/volumes" "$work/prepared" "$work/run"
containers=()
pids=()
api="" worker="" trainer="" probe=""  # working containers' names, set by container()

say() { echo "images-check: $*" >&2; }
fail() {
    say "FAILED: $*"
    for log in "$work"/*.log; do
        [[ -f $log ]] && { echo "--- ${log##*/} (last lines)" >&2; tail -n 25 "$log" >&2; }
    done
    exit 1
}
cleanup() {  # the services run in process groups of their own (setsid): end each whole group
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 20); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    for container in "${containers[@]}"; do buildah rm "$container" >/dev/null 2>&1 || true; done
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

container() {  # VARIABLE IMAGE: a new working container of the image, named in VARIABLE
    local name="heartvec-images-check-$$-${#containers[@]}"
    buildah from --quiet --pull-never --name "$name" "localhost/heartvec-$2:$TAG" >/dev/null
    containers+=("$name")
    printf -v "$1" '%s' "$name"
}
run_in() {  # CONTAINER ARGS... (buildah run options, then -- COMMAND)
    buildah run --isolation chroot "$@"
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
json_field() {  # FILE EXPRESSION (python, on `j`)
    python3 -c "import json, sys; j = json.load(open(sys.argv[1])); print($2)" "$1"
}

for image in api worker trainer; do
    buildah inspect --type image "localhost/heartvec-$image:$TAG" >/dev/null 2>&1 \
        || fail "no image localhost/heartvec-$image:$TAG: run make images first"
done

# --- the service: api + worker against this machine's Postgres and Redis ---------------------
psql "$PG/postgres" -qc "CREATE DATABASE $database" >/dev/null
redis-cli -u "$REDIS" flushdb >/dev/null
port=$(free_port)
service_env=(
    -e "HEARTVEC_DATABASE_URL=postgresql+psycopg://${PG#postgresql://}/$database"
    -e "HEARTVEC_BROKER_URL=$REDIS"
    -e "HEARTVEC_STORAGE_DIR=/data"
    -e "HEARTVEC_LOG_FORMAT=text"
    -v "$work/storage:/data"
)
container api api
setsid buildah run --isolation chroot "${service_env[@]}" "$api" -- \
    heartvec serve --host 127.0.0.1 --port "$port" >"$work/api.log" 2>&1 &
pids+=($!)
container worker worker
setsid buildah run --isolation chroot "${service_env[@]}" -e HEARTVEC_DEVICE=cpu "$worker" -- \
    heartvec worker >"$work/worker.log" 2>&1 &
pids+=($!)

container trainer trainer
run_in -v "$work/volumes:/volumes" "$trainer" -- \
    heartvec phantom /volumes --count 2 --seed 9000 --size 96 --spacing 2.5 >"$work/phantom.log" 2>&1 \
    || fail "heartvec phantom in the trainer image"
phantom=$work/volumes/phantom_s9000.nii.gz

for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 1
done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || fail "the API did not get ready in 120 s"
curl -fsS -o "$work/submitted.json" -F "file=@$phantom" -F resolution=64 -F refine_steps=20 \
    "http://127.0.0.1:$port/reconstruct" || fail "upload to the API"
job=$(json_field "$work/submitted.json" 'j["id"]')
status=queued
for _ in $(seq 300); do
    curl -fsS -o "$work/job.json" "http://127.0.0.1:$port/jobs/$job" || fail "GET /jobs/$job"
    status=$(json_field "$work/job.json" 'j["status"]')
    [[ $status == succeeded || $status == failed || $status == cancelled ]] && break
    sleep 1
done
[[ $status == succeeded ]] || fail "job $job: $status ($(json_field "$work/job.json" 'j["error"]'))"
for name in reconstruction.nii.gz report.json heart.glb latent.npy; do
    curl -fsS -o "$work/$name" "http://127.0.0.1:$port/jobs/$job/results/$name" \
        || fail "download $name"
    [[ -s $work/$name ]] || fail "$name is empty"
done
dice=$(json_field "$work/report.json" 'round(j["summary"]["mean_dice"], 3)')
job_s=$(json_field "$work/job.json" 'round(j["metrics"]["timings"]["total_s"], 1)')
say "job $job succeeded in the worker image (mean Dice $dice, $job_s s)"

# --- the trainer: prepare, split, one tiny epoch; the SIF's test; fcpw without its library ------
training=(-v "$work/volumes:/volumes" -v "$work/prepared:/prepared" -v "$work/run:/runs")
points=(--surface-points 4000 --vol-points 4000 --near-points 4000)
run_in "${training[@]}" "$trainer" -- heartvec prepare /volumes --out /prepared "${points[@]}" \
    >"$work/prepare.log" 2>&1 || fail "heartvec prepare in the trainer image"
run_in "${training[@]}" "$trainer" -- heartvec split /prepared --val-fraction 0.5 \
    >"$work/split.log" 2>&1 || fail "heartvec split in the trainer image"
run_in "${training[@]}" "$trainer" -- heartvec train --data /prepared --out /runs \
    --config tiny --epochs 1 --workers 1 >"$work/train.log" 2>&1 \
    || fail "heartvec train in the trainer image"
loss=$(json_field "$work/run/history.json" 'round(j[-1]["train_loss"], 4)')
say "trainer image: prepared 2 phantoms, one tiny epoch (train loss $loss)"

awk '/^%test/ {on = 1; next} /^%/ {on = 0} on' apptainer/trainer.def >"$work/sif-test.sh"
run_in -v "$work/sif-test.sh:/tmp/sif-test.sh:ro" "$trainer" -- sh /tmp/sif-test.sh \
    >"$work/sif-test.log" 2>&1 || fail "apptainer/trainer.def's %test in the trainer image"
say "apptainer/trainer.def's %test passed in the trainer image"

# a bind-mounted folder the Docker daemon made (as root): refused in one line, no traceback
mkdir -m 0755 "$work/made-by-root"
if run_in -v "$work/volumes:/volumes" -v "$work/made-by-root:/prepared" "$trainer" -- \
    heartvec prepare /volumes --out /prepared "${points[@]}" >"$work/root-owned.log" 2>&1; then
    fail "prepare wrote into a folder its user cannot write"
fi
grep -q "error: /prepared: not writable by uid 1000 (owned by uid 0)" "$work/root-owned.log" \
    || fail "prepare into a root-owned folder did not say why it cannot"

container probe trainer
run_in --user 0:0 "$probe" -- sh -c 'rm -f /usr/lib/x86_64-linux-gnu/libX11.so.6*' \
    || fail "removing libX11 from a throwaway container"
if run_in "$probe" -- python -c "import heartvec.distance" >"$work/no-x11.log" 2>&1; then
    fail "heartvec.distance imported without libX11"
fi
grep -q "cannot load: libX11.so.6: cannot open shared object file" "$work/no-x11.log" \
    || fail "the error without libX11 does not name it"

stand_ins=0 bases=0
while read -r base; do
    bases=$((bases + 1))
    label=$(buildah inspect --type image \
        --format '{{index .OCIv1.Config.Labels "org.heartvec.stand-in"}}' "$base" </dev/null)
    [[ -n $label ]] && stand_ins=$((stand_ins + 1))
done < <(awk 'toupper($1) == "FROM" {print $2}' docker/*.Dockerfile | sort -u)
echo "images-check: passed in $((SECONDS - started)) s: api + worker job succeeded (mean Dice" \
    "$dice at resolution 64), trainer prepare + 1 tiny epoch (loss $loss), trainer.def %test," \
    "clear errors for a root-owned output folder and without libX11; $stand_ins of $bases bases" \
    "are local stand-ins"
