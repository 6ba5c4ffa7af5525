"""Synthetic heart phantoms: determinism, voxel grid, anatomy (RAS+), sizes, contacts, topology."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from heartvec.phantom import PAINT_ORDER, STRUCTURES, make_phantom

LV, MYO, RV, LA, RA, AORTA, PA, SVC, IVC, PV = range(1, 11)
ALL_LABELS = set(range(1, 11))

PLAUSIBLE_ML = {
    LV: (60, 260),
    MYO: (60, 260),  # ~1.05 g/mL: 60-270 g
    RV: (60, 260),
    LA: (25, 120),
    RA: (25, 130),
    AORTA: (30, 200),
    PA: (10, 90),
    SVC: (3, 40),
    IVC: (5, 50),
    PV: (4, 40),
}


@pytest.fixture(
    scope="module",
    params=[(0, 256, 1.0), (1, 128, 2.0), (2, 128, 2.0), (3, 96, 2.0)],
    ids=lambda p: f"seed{p[0]}-{p[1]}vox-{p[2]}mm",
)
def heart(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    seed, size, spacing = request.param
    return make_phantom(seed, size, spacing)


def _centroid_mm(labels: np.ndarray, affine: np.ndarray, *classes: int) -> np.ndarray:
    voxels = np.argwhere(np.isin(labels, classes))
    return nib.affines.apply_affine(affine, voxels.mean(axis=0))


def _volume_ml(labels: np.ndarray, affine: np.ndarray, label: int) -> float:
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return float(np.count_nonzero(labels == label) * voxel_ml)


def _heart_crop(labels: np.ndarray) -> np.ndarray:
    """The labels around the heart with one voxel of background, so dilations stay cheap."""
    (block,) = ndimage.find_objects((labels > 0).astype(np.int8))
    return np.pad(labels[block], 1)


def _touches(labels: np.ndarray, label: int, *others: int) -> bool:
    """Whether a voxel of `label` shares a face with a voxel of one of `others`."""
    return bool((ndimage.binary_dilation(labels == label) & np.isin(labels, others)).any())


def test_same_seed_gives_identical_output() -> None:
    first_labels, first_affine = make_phantom(7, 128, 2.0)
    again_labels, again_affine = make_phantom(7, 128, 2.0)
    assert np.array_equal(first_labels, again_labels)
    assert np.array_equal(first_affine, again_affine)


def test_different_seeds_give_different_hearts() -> None:
    volumes = [np.bincount(make_phantom(seed, 96, 2.0)[0].ravel(), minlength=11) for seed in (0, 1)]
    assert not np.array_equal(volumes[0], volumes[1])


def test_grid_and_label_values(heart: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = heart
    size = labels.shape[0]
    assert labels.shape == (size, size, size)
    assert labels.dtype == np.uint8 and affine.dtype == np.float64
    assert set(np.unique(labels).tolist()) == ALL_LABELS | {0}
    assert set(STRUCTURES) == ALL_LABELS
    assert sorted(PAINT_ORDER) == sorted(ALL_LABELS)


@pytest.mark.parametrize(("size", "spacing"), [(256, 1.0), (128, 2.0), (96, 2.0), (64, 1.0)])
def test_affine_is_ras_with_the_volume_centre_at_the_origin(size: int, spacing: float) -> None:
    labels, affine = make_phantom(0, size, spacing)
    assert labels.shape == (size, size, size)
    # nibabel: 'R' for the first axis means x grows towards the patient's Right.
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert np.allclose(np.diag(affine)[:3], spacing)
    centre = nib.affines.apply_affine(affine, np.full(3, (size - 1) / 2.0))
    assert np.allclose(centre, 0.0)


def test_volumes_are_plausible(heart: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = heart
    ml = {label: _volume_ml(labels, affine, label) for label in ALL_LABELS}
    for label, (low, high) in PLAUSIBLE_ML.items():
        assert low <= ml[label] <= high, (STRUCTURES[label], ml[label])
    for vein in (SVC, IVC, PV):
        assert ml[vein] < min(ml[LA], ml[RA], ml[LV], ml[RV])
    assert ml[PA] < min(ml[LV], ml[RV])


def test_anatomical_orientation(heart: tuple[np.ndarray, np.ndarray]) -> None:
    labels, affine = heart
    x, y, z = 0, 1, 2
    lv = _centroid_mm(labels, affine, LV)
    la = _centroid_mm(labels, affine, LA)
    ra = _centroid_mm(labels, affine, RA)
    rv = _centroid_mm(labels, affine, RV)
    ventricles = _centroid_mm(labels, affine, LV, MYO, RV)
    assert lv[x] < ra[x]  # LV on the patient's left: lower x in RAS+
    assert rv[x] > lv[x] and rv[y] > lv[y]  # RV right and anterior of the LV
    assert la[y] < lv[y] and la[y] < ra[y]  # LA the most posterior chamber
    assert la[z] > ventricles[z] and ra[z] > ventricles[z]

    lv_voxels = nib.affines.apply_affine(affine, np.argwhere(labels == LV))
    apex = lv_voxels[np.argmax(np.linalg.norm(lv_voxels - la, axis=1))]
    assert apex[x] < lv[x] and apex[y] > lv[y] and apex[z] < lv[z]  # left, anterior, inferior

    top_z = {label: np.argwhere(labels == label)[:, z].max() for label in (AORTA, LA, RA)}
    assert top_z[AORTA] > max(top_z[LA], top_z[RA])
    aorta_voxels = np.argwhere(labels == AORTA)
    lowest_aorta = nib.affines.apply_affine(affine, aorta_voxels[aorta_voxels[:, z].argmin()])
    assert lowest_aorta[y] < la[y] and lowest_aorta[x] < ra[x]  # descending: posterior, left
    assert _centroid_mm(labels, affine, SVC)[z] > ra[z] > _centroid_mm(labels, affine, IVC)[z]
    assert _centroid_mm(labels, affine, PA)[z] > rv[z]
    veins_x = nib.affines.apply_affine(affine, np.argwhere(labels == PV))[:, x]
    assert veins_x.min() < la[x] - 20.0 and veins_x.max() > la[x] + 20.0  # both sides


def test_neighbours_touch_and_the_septum_separates_the_ventricles(
    heart: tuple[np.ndarray, np.ndarray],
) -> None:
    crop = _heart_crop(heart[0])
    assert _touches(crop, LV, MYO)
    assert _touches(crop, MYO, RV)
    assert _touches(crop, LA, LV, MYO)
    assert _touches(crop, RA, RV)
    assert _touches(crop, LA, RA)
    assert _touches(crop, AORTA, LV, MYO)
    assert _touches(crop, PA, RV)
    assert _touches(crop, SVC, RA)
    assert _touches(crop, IVC, RA)
    assert _touches(crop, PV, LA)
    assert not _touches(crop, LV, RV)


def test_each_structure_is_one_piece(heart: tuple[np.ndarray, np.ndarray]) -> None:
    crop = _heart_crop(heart[0])
    for label in ALL_LABELS - {PV}:
        components, _ = ndimage.label(crop == label)
        sizes = np.bincount(components.ravel())[1:]
        assert sizes.max() > 0.95 * sizes.sum(), STRUCTURES[label]
    # The four pulmonary veins are separate stumps, each entering the LA.
    components, _ = ndimage.label(crop == PV)
    sizes = np.bincount(components.ravel())[1:]
    veins = np.argsort(sizes)[::-1][:4] + 1
    assert sizes[veins - 1].sum() > 0.99 * sizes.sum()
    for vein in veins:
        assert (ndimage.binary_dilation(components == vein) & (crop == LA)).any()


@pytest.mark.parametrize(("size", "spacing", "margin"), [(256, 1.0, 5), (96, 2.0, 1)])
def test_heart_stays_inside_the_volume(size: int, spacing: float, margin: int) -> None:
    for seed in range(4):
        labels = make_phantom(seed, size, spacing)[0]
        occupied = np.argwhere(labels > 0)
        assert occupied.min() >= margin and occupied.max() < size - margin, seed
        assert set(np.unique(labels).tolist()) == ALL_LABELS | {0}


def test_the_same_seed_gives_the_same_heart_in_mm_on_any_grid() -> None:
    fine_labels, fine_affine = make_phantom(4, 256, 1.0)
    coarse_labels, coarse_affine = make_phantom(4, 128, 2.0)
    for label in (LV, MYO, RV, LA, RA, AORTA):
        fine_ml = _volume_ml(fine_labels, fine_affine, label)
        assert _volume_ml(coarse_labels, coarse_affine, label) == pytest.approx(fine_ml, rel=0.08)
        fine_centre = _centroid_mm(fine_labels, fine_affine, label)
        assert np.allclose(_centroid_mm(coarse_labels, coarse_affine, label), fine_centre, atol=2.0)


def test_a_small_field_of_view_clips_without_failing() -> None:
    labels, _ = make_phantom(0, 32, 1.0)
    assert labels.shape == (32, 32, 32) and labels.any()


def test_full_size_phantom_is_fast() -> None:
    start = time.perf_counter()
    make_phantom(5)
    assert time.perf_counter() - start < 10.0  # typically well under a second


@pytest.mark.parametrize(("size", "spacing"), [(0, 1.0), (64, 0.0), (64, -1.0)])
def test_bad_grid_is_rejected(size: int, spacing: float) -> None:
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size, spacing)
