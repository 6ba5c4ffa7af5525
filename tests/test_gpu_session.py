"""services/trainer/gpu_session.sh, the one-lease GPU script, run through on the CPU: CI never
has a GPU, and a lease is too short to find a script's mistakes in. The real-anatomy route:
hearts made from one subject (`heartvec augment` in parallel processes) with phantoms,
training from the bundled checkpoint, export, and the checkpoint alone on a held-out subject
before and after. Phantoms stand in for the two real subjects, so that it runs everywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import pytest

from heartvec.model.checkpoint import load_checkpoint
from heartvec.phantom import make_phantom
from heartvec.settings import BUNDLED_CHECKPOINT
from heartvec_testing.volumes import REPO, write_nifti

pytestmark = pytest.mark.slow


def test_the_lease_script_trains_on_hearts_made_from_one_subject_and_measures_the_other(
    tmp_path: Path,
) -> None:
    labels, affine = make_phantom(31, size=96, spacing=2.0)
    real = write_nifti(tmp_path / "subject.nii.gz", labels, affine)
    labels, affine = make_phantom(32, size=96, spacing=2.0)
    held_out = write_nifti(tmp_path / "held_out.nii.gz", labels, affine)
    config = tmp_path / "cpu.yaml"
    config.write_text(
        "preset: small\ntrain:\n  epochs: 1000\n  batch_size: 2\n  learning_rate: 1.0e-5\n"
        "  warmup_steps: 2\n  val_every: 1\n  workers: 0\n  checkpoint_every_s: 1\n"
    )
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
        "OUT": str(out),
        "DATA": str(tmp_path / "data"),
        "RUN": str(tmp_path / "run"),
        "DEVICE": "cpu",
        "WORKERS": "2",
        "REAL": str(real),
        "REAL_LABELS": "default",
        "REAL_COUNT": "3",
        "PHANTOMS": "3",
        "PHANTOM_SEED": "4100",
        "POINTS": "3000",
        "SCALE_MM": "90",
        "STRENGTH": "0.5",
        "PREPARE_S": "300",
        "HELD_OUT": str(held_out),
        "HELD_OUT_LABELS": "default",
        "HELD_OUT_RESOLUTION": "48",
        "CONFIG": str(config),
        "TRAIN_S": "10",
        "SNAPSHOT_S": "1",
        "LATENCY_REPEATS": "0",
    }
    done = subprocess.run(
        ["bash", "services/trainer/gpu_session.sh"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert f"3 hearts made from {real}" in log
    made = sorted(p.name for p in (tmp_path / "data" / "volumes").glob("*.nii.gz"))
    assert sum("_aug_s" in name for name in made) == 3 and len(made) == 6, made
    # the seeds follow one another across the parallel processes
    seeds = sorted(int(n.split("_aug_s")[1].split(".")[0]) for n in made if "_aug_s" in n)
    assert seeds == [10000, 10001, 10002]
    heart = next((tmp_path / "data" / "volumes").glob("*_aug_s10001.nii.gz"))
    description = nib.load(heart).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert description == "heartvec augment seed 10001 strength 0.5"  # STRENGTH
    hashes = {}
    # snapshots every second, the last AVERAGE (4) of them averaged into a third candidate
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))
    assert len(snapshots) >= 2, snapshots
    assert f"the average of {min(4, len(snapshots))})" in log
    steps = [load_checkpoint(path)["step"] for path in snapshots]
    assert steps == sorted(set(steps)), steps  # each new checkpoint once, in order
    for name in ("init", "last", "best", "average"):
        report = json.loads((out / f"held_out_{name}" / "report.json").read_text())
        assert report["refinement"] is None  # the checkpoint alone
        assert 0.2 < report["summary"]["mean_dice"] <= 1.0
        assert f"held out, {name}: the checkpoint alone mean Dice" in log
        hashes[name] = report["model"]["checkpoint_sha256"]
        # the bundled checkpoint's frame, then the one the run trained in (SCALE_MM)
        assert report["normalization"]["scale_mm"] == (100.0 if name == "init" else 90.0)
    assert hashes["last"] != hashes["init"]  # measured with the checkpoint it trained
    trained = load_checkpoint(out / "heartvec-small.pt")
    assert trained["step"] > 0 and (out / "history.json").is_file()
    assert trained["normalization"] == {"scale_mm": 90.0}
    assert load_checkpoint(BUNDLED_CHECKPOINT)["model_config"] == trained["model_config"]
