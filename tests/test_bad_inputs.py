"""Every bad input of CONTRACT.md: one clear message naming the file, exit 2, the batch goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from heartvec.errors import InputError
from heartvec.labels import load_label_table
from heartvec.volume import load_label_volume, scan_label_file
from heartvec_testing.bad_inputs import AFFINE, BAD_INPUTS, blob
from heartvec_testing.volumes import write_nifti

CLI = Callable[..., tuple[int, str, str]]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_loader_names_the_file_and_the_problem(case: str, tmp_path: Path) -> None:
    make, words = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as error:
        load_label_volume(path, load_label_table("default"))
    assert str(path) in str(error.value)
    assert words in str(error.value)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_streaming_scan_refuses_what_the_loader_refuses(case: str, tmp_path: Path) -> None:
    make, words = BAD_INPUTS[case]
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        scan_label_file(make(tmp_path), load_label_table("default"))


def test_streaming_scan_counts_what_the_loader_counts(small_phantom: Path) -> None:
    table = load_label_table("default")
    image, counts = scan_label_file(small_phantom, table)
    assert counts == load_label_volume(small_phantom, table).label_counts
    assert image.shape == (112, 112, 112)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_inspect_exits_2_with_one_line(case: str, tmp_path: Path, run_cli: CLI) -> None:
    make, words = BAD_INPUTS[case]
    path = make(tmp_path)
    status, out, err = run_cli("inspect", path)
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heartvec: error: ")
    assert str(path) in lines[0] and words in lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_prepare_single_bad_file_exits_2(case: str, tmp_path: Path, run_cli: CLI) -> None:
    make, words = BAD_INPUTS[case]
    path = make(tmp_path)
    status, _, err = run_cli("prepare", path, "--out", tmp_path / "out")
    assert status == 2
    assert f"heartvec: error: {path}" in err and words in err
    assert not list((tmp_path / "out").glob("*.npz"))
    report = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert report["summary"]["failed"] == 1
    assert words in report["files"][0]["error"]


def test_prepare_batch_goes_on_past_every_bad_file(tmp_path: Path, run_cli: CLI) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = [write_nifti(inputs / f"good_{i}.nii.gz", blob() * (i + 1), AFFINE) for i in range(2)]
    bad = [make(inputs) for make, _ in BAD_INPUTS.values()]
    small = ["--surface-points", "500", "--vol-points", "500", "--near-points", "500"]
    status, out, err = run_cli("prepare", *good, *bad, "--out", tmp_path / "out", *small)
    assert status == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == ["good_0.npz", "good_1.npz"]
    for path, (_, words) in zip(bad, BAD_INPUTS.values(), strict=True):
        assert f"heartvec: error: {path}" in err and words in err
    assert "prepared 2, skipped 0, failed 10" in out


def test_unknown_labels_can_be_ignored(tmp_path: Path, run_cli: CLI) -> None:
    path = BAD_INPUTS["unknown_labels"][0](tmp_path)
    status, out, _ = run_cli("inspect", path, "--ignore-unknown-labels")
    assert status == 0 and "ignored unknown label values" in out and "42" in out
    volume = load_label_volume(path, load_label_table("default"), ignore_unknown_labels=True)
    assert set(np.unique(volume.classes)) == {0, 1}


def test_float_labels_holding_integers_are_accepted(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "float.nii.gz", blob().astype(np.float32) * 3, AFFINE)
    volume = load_label_volume(path, load_label_table("default"))
    assert volume.label_counts[3] == 12**3
    assert set(np.unique(volume.classes)) == {0, 3}


def test_trailing_singleton_dimension_is_a_3d_volume(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "singleton.nii.gz", blob()[..., None], AFFINE)
    assert load_label_volume(path, load_label_table("default")).shape == (24, 24, 24)


def test_raw_mmwhs_codes_map_to_classes(tmp_path: Path) -> None:
    labels = blob()
    labels[labels == 1] = 500  # MM-WHS raw code of the left ventricle
    labels[2:5, 2:5, 2:5] = 205  # and of the myocardium
    path = write_nifti(tmp_path / "raw.nii.gz", labels, AFFINE)
    volume = load_label_volume(path, load_label_table("mmwhs-raw"))
    assert volume.classes[10, 10, 10] == 1 and volume.classes[3, 3, 3] == 2


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_mostly_empty_scan_loads_as_a_whole(suffix: str, tmp_path: Path) -> None:
    """Counts and classes come from the box of the nonzero voxels: the rest must still be
    counted as background and stay background, whatever the values inside the box."""
    scan = np.zeros((60, 50, 70), dtype=np.int16)
    scan[20:30, 11:19, 40:52] = 500
    scan[25, 12, 44] = 205
    scan[33, 30, 60] = -7  # an unknown value outside the heart widens the box
    path = write_nifti(tmp_path / f"scan{suffix}", scan, AFFINE)
    volume = load_label_volume(path, load_label_table("mmwhs-raw"), ignore_unknown_labels=True)
    values, counts = np.unique(scan, return_counts=True)
    assert volume.label_counts == dict(zip(values.tolist(), counts.tolist(), strict=True))
    assert volume.unknown_labels == [-7]
    expected = np.zeros(scan.shape, dtype=np.uint8)
    expected[scan == 500], expected[scan == 205] = 1, 2
    np.testing.assert_array_equal(volume.classes, expected)
    low, high = volume.foreground_box()
    np.testing.assert_array_equal(low, [20, 11, 40])
    np.testing.assert_array_equal(high, [30, 19, 52])
