"""The cluster route: `apptainer/train.sbatch` run as SLURM would run it, with stand-ins for the
commands this machine lacks (srun runs its command, apptainer runs the command here with the
binds applied to its arguments, scontrol writes what it was asked), and the real torchrun,
trainer and DDP on two CPU processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heartvec.cli import main as heartvec_main
from heartvec.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "apptainer" / "train.sbatch"

SHIMS = {
    "srun": 'exec "$@"\n',
    "scontrol": 'echo "$*" >>"$SCONTROL_LOG"\n',
    # apptainer exec [--nv] [--bind SRC:DST[:OPTS]]... IMAGE COMMAND...
    "apptainer": """[[ $1 == exec ]] || exit 64
shift
binds=()
while [[ $1 == --* ]]; do
    case $1 in
        --nv) shift ;;
        --bind) binds+=("$2"); shift 2 ;;
        *) echo "apptainer stand-in: unknown option $1" >&2; exit 64 ;;
    esac
done
echo "apptainer stand-in: would run in $1" >&2
shift
args=()
for arg in "$@"; do
    for bind in "${binds[@]}"; do
        IFS=: read -r source target _ <<<"$bind"
        if [[ $arg == "$target" || $arg == "$target"/* ]]; then arg=$source${arg#"$target"}; fi
    done
    args+=("$arg")
done
exec "${args[@]}"
""",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small phantoms, the train split listing each 4 times, and a validation split."""
    root = tmp_path_factory.mktemp("cluster")
    volumes, data = root / "volumes", root / "data"
    assert heartvec_main(["phantom", str(volumes), "--count", "2", "--seed", "60",
                          "--size", "80", "--spacing", "2.6"]) == 0  # fmt: skip
    points = ["--surface-points", "4000", "--vol-points", "3000", "--near-points", "3000"]
    assert heartvec_main(["prepare", str(volumes), "--out", str(data), *points]) == 0
    names = sorted(p.name for p in data.glob("*.npz"))
    (data / "train.csv").write_text("\n".join(["file", *(names * 4)]) + "\n")
    (data / "val.csv").write_text(f"file\n{names[0]}\n")
    return data


def test_train_sbatch_requeues_itself_on_usr1_and_the_requeued_job_finishes(
    prepared: Path, tmp_path: Path
) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in SHIMS.items():
        (shims / name).write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
        (shims / name).chmod(0o755)
    run, log = tmp_path / "run", tmp_path / "scontrol.log"
    run.mkdir()
    epochs = 40  # 8 items, 2 ranks, batch 1: 4 steps an epoch
    (run / "config.yaml").write_text(
        f"preset: tiny\ntrain: {{epochs: {epochs}, batch_size: 1, val_every: 0}}\n"
    )
    environment = {
        **os.environ,
        "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_CPUS_PER_TASK": "2",
        "HEARTVEC_TRAIN_DEVICE": "cpu",
        "SCONTROL_LOG": str(log),
        "OMP_NUM_THREADS": "1",
    }
    command = ["bash", str(SBATCH), str(prepared), str(run), "/runs/config.yaml"]

    job = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = run / "checkpoint-last.pt"
    deadline = time.monotonic() + 180
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends the batch script
    sent = time.monotonic()
    output, _ = job.communicate(timeout=120)
    assert time.monotonic() - sent < 60, output[-3000:]
    assert job.returncode == 0, output[-3000:]
    assert "SIGUSR1 received: the trainer saves" in output  # the script's trap
    assert "SIGUSR1 received: stopped after step" in output  # rank 0, through torchrun
    assert "requeueing job 4242" in output
    assert log.read_text().split() == ["requeue", "4242"]
    stopped = load_checkpoint(last)
    assert 0 < stopped["step"] < 4 * epochs
    time.sleep(2)  # no rank may still be training (and saving) after the script has ended
    assert load_checkpoint(last)["step"] == stopped["step"]

    again = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming {last} after epoch {stopped['epoch']}" in (again.stdout + again.stderr)
    finished = load_checkpoint(last)
    assert finished["epoch"] == epochs and finished["step"] == 4 * epochs
    assert log.read_text().split() == ["requeue", "4242"]  # not requeued again
