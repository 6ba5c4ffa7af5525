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


def test_strength_scales_every_departure_from_the_subject() -> None:
    ranges = AugmentRanges()
    assert ranges.scaled(1.0) == ranges
    double = ranges.scaled(2.0)
    assert double.rotation_deg == 2 * ranges.rotation_deg
    assert double.scale == pytest.approx((0.8, 1.2))
    assert double.anisotropy == pytest.approx(2 * ranges.anisotropy)
    assert double.shift_mm == 2 * ranges.shift_mm
    assert double.structure_scale == pytest.approx(2 * ranges.structure_scale)
    assert double.warp_mm == 2 * ranges.warp_mm
    assert (double.ct_spacing_mm, double.cut_probability) == (
        ranges.ct_spacing_mm, ranges.cut_probability,
    )  # fmt: skip
    for bad in (-0.5, 3.5, float("nan")):
        with pytest.raises(ValueError, match="strength"):
            ranges.scaled(bad)


def test_strength_zero_keeps_the_subject_and_more_departs_further(subject: Path) -> None:
    volume = load_label_volume(subject, load_label_table("default"))
    base = {c: (volume.classes == c).sum() * volume.voxel_volume_mm3 for c in range(1, 10)}

    def departure(strength: float, seed: int) -> float:
        """The largest change of a class's volume, as a fraction."""
        ranges = AugmentRanges(cut_probability=0.0).scaled(strength)
        labels, affine = augment(volume, np.random.default_rng(seed), ranges)
        voxel_mm3 = float(np.prod(np.abs(np.diag(affine)[:3])))
        return max(
            abs((labels == c).sum() * voxel_mm3 / v - 1) for c, v in base.items()
        )  # fmt: skip

    assert max(departure(0.0, seed) for seed in range(2)) < 0.1  # resampling alone (0.06)
    assert min(departure(2.5, seed) for seed in range(2)) > 0.4  # (0.66 and more)


def test_the_command_refuses_a_bad_strength(subject: Path, tmp_path: Path) -> None:
    from heartvec.cli import main

    for bad in ("-1", "3.5", "nan"):
        with pytest.raises(SystemExit) as refused:
            main(["augment", str(subject), "--out", str(tmp_path / "bad"), "--strength", bad])
        assert refused.value.code == 2 and not (tmp_path / "bad").exists()
    out = tmp_path / "zero"
    args = ["--seed", "3", "--count", "2", "--strength", "0"]
    assert main(["augment", str(subject), "--out", str(out), *args]) == 0
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 2
    description = nib.load(written[0]).header["descrip"].tobytes().rstrip(b"\0").decode()
    assert description == "heartvec augment seed 3 strength 0"
