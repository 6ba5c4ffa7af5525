"""`heartvec prepare` as users run it: batches, workers, resume, shards, reports; and `split`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from heartvec.cli.phantom import phantom_path
from heartvec_testing.volumes import REPO, SMALL_SIZE, SMALL_SPACING
from heartvec_trainer.prepare import NPZ_KEYS, is_complete_npz

CLI = Callable[..., tuple[int, str, str]]
FEW_POINTS = ("--surface-points", "3000", "--vol-points", "3000", "--near-points", "3000")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small phantoms written by the `heartvec phantom` command itself."""
    from heartvec.cli import main

    folder = tmp_path_factory.mktemp("phantoms")
    args = ["phantom", str(folder), "--count", "4", "--seed", "20"]
    assert main([*args, "--size", str(SMALL_SIZE), "--spacing", str(SMALL_SPACING)]) == 0
    return folder


def test_phantom_command_writes_distinct_volumes(phantom_dir: Path) -> None:
    import nibabel as nib

    paths = sorted(phantom_dir.glob("*.nii.gz"))
    assert [p.name for p in paths] == [phantom_path(phantom_dir, s).name for s in range(20, 24)]
    first, second = (np.asarray(nib.load(p).dataobj) for p in paths[:2])
    assert first.shape == (SMALL_SIZE,) * 3 and not np.array_equal(first, second)
    assert np.allclose(nib.load(paths[0]).header.get_zooms(), SMALL_SPACING)


def test_prepare_folder_with_two_workers(phantom_dir: Path, tmp_path: Path, run_cli: CLI) -> None:
    out = tmp_path / "prepared"
    status, stdout, _ = run_cli("prepare", phantom_dir, "--out", out, "--workers", "2", *FEW_POINTS)
    assert status == 0
    assert "prepared 4, skipped 0, failed 0" in stdout
    outputs = sorted(out.glob("*.npz"))
    assert len(outputs) == 4 and all(is_complete_npz(p) for p in outputs)
    with np.load(outputs[0]) as sample:
        assert set(sample.files) == set(NPZ_KEYS)
        assert sample["vol_sdf"].shape == (3000, 10)
    report = json.loads((out / "quality.json").read_text())
    assert report["summary"] == {
        "files": 4,
        "prepared": 4,
        "failed": 0,
        "min_sign_agreement_far": pytest.approx(1.0, abs=1e-3),
        "mean_seconds_per_file": report["summary"]["mean_seconds_per_file"],
    }
    record = report["files"][0]
    aorta = record["quality"]["per_class"]["aorta"]
    assert aorta["faces"] > 1000 and 0 < aorta["inside_fraction_near"] < 1
    assert aorta["sdf_min"] < 0 < aorta["sdf_max"]
    assert set(record["timings"]) >= {"load_s", "marching_cubes_s", "sdf_s", "total_s"}
    assert (out / "quality.png").stat().st_size > 20_000
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_rerun_skips_finished_files_and_is_reproducible(
    phantom_dir: Path, tmp_path: Path, run_cli: CLI
) -> None:
    out = tmp_path / "prepared"
    one = phantom_path(phantom_dir, 20)
    assert run_cli("prepare", one, "--out", out, *FEW_POINTS)[0] == 0
    first = (out / "phantom_s0020.npz").read_bytes()
    mtime = (out / "phantom_s0020.npz").stat().st_mtime_ns
    status, stdout, _ = run_cli("prepare", phantom_dir, "--out", out, *FEW_POINTS)
    assert status == 0 and "prepared 3, skipped 1" in stdout
    assert (out / "phantom_s0020.npz").stat().st_mtime_ns == mtime
    report = json.loads((out / "quality.json").read_text())
    assert report["summary"]["prepared"] == 4  # earlier runs' records are kept
    # --overwrite redoes it, and the same seed gives the same bytes
    assert run_cli("prepare", one, "--out", out, "--overwrite", *FEW_POINTS)[0] == 0
    assert (out / "phantom_s0020.npz").read_bytes() == first


def test_shards_partition_the_inputs(phantom_dir: Path, tmp_path: Path, run_cli: CLI) -> None:
    names = []
    for shard in ("0/3", "1/3", "2/3"):
        out = tmp_path / shard.replace("/", "_")
        assert run_cli("prepare", phantom_dir, "--out", out, "--shard", shard, *FEW_POINTS)[0] == 0
        names += [p.name for p in out.glob("*.npz")]
    assert sorted(names) == sorted(f"phantom_s{s:04d}.npz" for s in range(20, 24))
    status, _, err = run_cli("prepare", phantom_dir, "--out", tmp_path / "x", "--shard", "3/3")
    assert status == 2 and "expected 0 <= I < N" in err


def test_killed_run_leaves_no_half_file_and_resumes(phantom_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    heartvec = str(Path(sys.executable).parent / "heartvec")
    command = [
        heartvec, "prepare", str(phantom_dir), "--out", str(out),
        "--surface-points", "100000", "--vol-points", "100000", "--near-points", "100000",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the next file's work
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = list(out.glob("*.npz"))
    assert 1 <= len(finished) < 4
    assert all(is_complete_npz(p) for p in finished)
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert f"skipped {len(finished)}" in resumed.stdout
    assert all(is_complete_npz(p) for p in out.glob("*.npz")) and len(list(out.glob("*.npz"))) == 4


def test_split_is_seeded_stable_and_complete(tmp_path: Path, run_cli: CLI) -> None:
    for i in range(50):
        (tmp_path / f"case_{i:02d}.npz").write_bytes(b"")
    assert run_cli("split", tmp_path, "--val-fraction", "0.2", "--seed", "3")[0] == 0
    train = (tmp_path / "train.csv").read_text().split()
    val = (tmp_path / "val.csv").read_text().split()
    assert train[0] == val[0] == "file"
    assert sorted(train[1:] + val[1:]) == sorted(f"case_{i:02d}.npz" for i in range(50))
    assert 4 <= len(val) - 1 <= 18
    # adding files never moves an existing one between the splits
    for i in range(50, 60):
        (tmp_path / f"case_{i:02d}.npz").write_bytes(b"")
    assert run_cli("split", tmp_path, "--val-fraction", "0.2", "--seed", "3")[0] == 0
    assert set(val[1:]) <= set((tmp_path / "val.csv").read_text().split())
    assert run_cli("split", tmp_path, "--seed", "4")[0] == 0
    assert (tmp_path / "val.csv").read_text().split() != val


def test_split_of_two_files_has_one_on_each_side(tmp_path: Path, run_cli: CLI) -> None:
    for seed in range(20):
        for name in ("a.npz", "b.npz"):
            (tmp_path / name).write_bytes(b"")
        assert run_cli("split", tmp_path, "--val-fraction", "0.5", "--seed", str(seed))[0] == 0
        assert len((tmp_path / "train.csv").read_text().split()) == 2  # header + one
        assert len((tmp_path / "val.csv").read_text().split()) == 2


def test_split_refuses_an_empty_folder(tmp_path: Path, run_cli: CLI) -> None:
    status, _, err = run_cli("split", tmp_path)
    assert status == 2 and "no .npz files" in err


def test_prepare_without_inputs_found(tmp_path: Path, run_cli: CLI) -> None:
    status, _, err = run_cli("prepare", tmp_path, "--out", tmp_path / "out")
    assert status == 2 and "no .nii or .nii.gz files found" in err


@pytest.mark.slow
def test_real_heart_with_its_label_table(real_heart: Path, tmp_path: Path, run_cli: CLI) -> None:
    out = tmp_path / "real"
    status, _, _ = run_cli("prepare", real_heart, "--out", out, "--labels", "mmwhs")
    assert status == 0
    record = json.loads((out / "quality.json").read_text())["files"][0]
    quality = record["quality"]
    assert quality["orientation"] == "LAS"
    assert quality["sign_agreement_far"] >= 0.999
    assert sorted(quality["classes_present"]) == sorted(
        ["left_ventricle", "lv_myocardium", "right_ventricle", "left_atrium", "right_atrium",
         "aorta", "pulmonary_artery"]
    )  # fmt: skip
    assert record["worker_peak_rss_mb"] < 4096
    with np.load(out / "whole_heart_mmwhs_labels.npz") as sample:
        assert sample["class_present"].tolist() == [True] * 7 + [False] * 3
        assert np.all(sample["vol_sdf"][:, 7:] == 2.0)


def test_an_output_folder_it_cannot_write_is_refused_clearly(
    phantom_dir: Path, tmp_path: Path, run_cli: CLI
) -> None:
    """A container's user (uid 1000) given a bind-mounted folder the Docker daemon made as root
    (`make images-check` runs exactly that in the trainer image): one line naming the folder and
    the fix, exit status 2, no traceback. Here the folder is made unwritable for this process:
    read-only for a user, immutable (chattr +i) for root, who could write it otherwise."""
    out = tmp_path / "prepared"
    out.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
    elif not shutil.which("chattr") or subprocess.run(["chattr", "+i", out]).returncode:
        pytest.skip("root, and chattr +i unavailable here: nothing is unwritable for root")
    try:
        status, _, err = run_cli("prepare", phantom_dir, "--out", out, *FEW_POINTS)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", out], check=True)
    assert status == 2 and f"heartvec: error: {out}" in err, err
    assert "cannot create it" in err or "not writable by uid" in err
    assert "Traceback" not in err and not list(out.iterdir())
