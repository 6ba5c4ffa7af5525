"""Training volumes from a subject (`heartvec augment`): another plausible heart each time, with
the subject's classes, the scan of its own, reproducible by seed."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartvec.augment import AugmentRanges, augment
from heartvec.labels import load_label_table
from heartvec.phantom import make_phantom
from heartvec.volume import load_label_volume
from heartvec_testing.volumes import write_nifti


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom without its pulmonary veins (a subject lacking a class), 1.6 mm voxels."""
    labels, affine = make_phantom(11, size=128, spacing=1.6)
    labels[labels == 10] = 0
    return write_nifti(tmp_path_factory.mktemp("subject") / "subject.nii.gz", labels, affine)


def test_augmented_hearts_keep_the_classes_and_differ(subject: Path) -> None:
    volume = load_label_volume(subject, load_label_table("default"))
    ranges = AugmentRanges(cut_probability=0.0)
    base = {c: (volume.classes == c).sum() * volume.voxel_volume_mm3 for c in range(1, 10)}
    shapes = set()
    for seed in range(3):
        labels, affine = augment(volume, np.random.default_rng(seed), ranges)
        spacing = np.abs(np.diag(affine)[:3])
        in_plane = ranges.ct_spacing_mm[0] if spacing[0] < 1.1 else ranges.mri_spacing_mm[0]
        assert spacing[0] == spacing[1] and in_plane[0] <= spacing[0] <= in_plane[1]
        voxel_mm3 = float(np.prod(spacing))
        assert set(np.unique(labels)) == set(range(10))  # the veins stay absent
        for class_index, volume_mm3 in base.items():  # other sizes, within anatomy's range
            ratio = (labels == class_index).sum() * voxel_mm3 / volume_mm3
            assert 0.5 < ratio < 1.8, (seed, class_index, ratio)
        shapes.add(labels.shape)
    assert len(shapes) == 3  # each its own scan
    again, affine_again = augment(volume, np.random.default_rng(2), ranges)
    np.testing.assert_array_equal(again, labels)
    np.testing.assert_array_equal(affine_again, affine)


def test_vessels_are_cut_from_their_open_end(subject: Path) -> None:
    volume = load_label_volume(subject, load_label_table("default"))
    whole, affine = augment(volume, np.random.default_rng(5), AugmentRanges(cut_probability=0.0))
    cut, _ = augment(volume, np.random.default_rng(5), AugmentRanges(cut_probability=1.0))
    z = affine[2, 2] * np.arange(whole.shape[2]) + affine[2, 3]
    for class_index, from_above in ((6, True), (9, False)):  # aorta, inferior vena cava
        kept, before = (cut == class_index).sum(), (whole == class_index).sum()
        assert 0.2 * before < kept < before, class_index
        heights = z[np.argwhere(cut == class_index)[:, 2]]
        full = z[np.argwhere(whole == class_index)[:, 2]]
        if from_above:
            assert heights.max() < full.max() and heights.min() == full.min()
        else:
            assert heights.min() > full.min() and heights.max() == full.max()
    np.testing.assert_array_equal(cut == 1, whole == 1)  # chambers untouched


def test_the_command_writes_volumes_prepare_takes(subject: Path, tmp_path: Path) -> None:
    from heartvec.cli import main

    out = tmp_path / "augmented"
    assert main(["augment", str(subject), "--out", str(out), "--count", "2", "--seed", "7"]) == 0
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["subject_aug_s0007.nii.gz", "subject_aug_s0008.nii.gz"]
    assert nib.load(written[0]).get_data_dtype() == np.uint8
    points = ["--surface-points", "3000", "--vol-points", "3000", "--near-points", "3000"]
    assert main(["prepare", str(out), "--out", str(tmp_path / "prepared"), *points]) == 0
    assert len(list((tmp_path / "prepared").glob("*.npz"))) == 2


def test_workers_write_the_same_volumes_as_one_process(subject: Path, tmp_path: Path) -> None:
    from heartvec.cli import main

    args = [str(subject), "--count", "3", "--seed", "20"]
    assert main(["augment", *args, "--out", str(tmp_path / "one")]) == 0
    assert main(["augment", *args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    from heartvec.cli.augment import _subject

    assert _subject.cache_info().currsize == 0  # the caller's process keeps no subject loaded
    one = sorted((tmp_path / "one").iterdir())
    two = sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 3
    for a, b in zip(one, two, strict=True):
        first, second = nib.load(a), nib.load(b)
        np.testing.assert_array_equal(np.asarray(first.dataobj), np.asarray(second.dataobj))
        np.testing.assert_array_equal(first.affine, second.affine)
    with pytest.raises(SystemExit) as refused:
        main(["augment", *args, "--out", str(tmp_path / "bad"), "--workers", "0"])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()
