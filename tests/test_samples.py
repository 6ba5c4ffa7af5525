"""Prepared samples: the `.npz` contents of CONTRACT.md, exact distances and correct signs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heartvec.distance import SurfaceDistance
from heartvec.labels import load_label_table
from heartvec.samples import ABSENT_SDF, Sample, SampleSettings, prepare_sample
from heartvec.volume import LabelVolume, load_label_volume
from heartvec_testing.geometry import point_triangles_distance, winding_number

SETTINGS = SampleSettings(surface_points=20_000, vol_points=20_000, near_points=20_000)


@pytest.fixture(scope="module")
def phantom_sample(small_phantom: Path) -> tuple[LabelVolume, Sample]:
    volume = load_label_volume(small_phantom, load_label_table("default"))
    return volume, prepare_sample(volume, SETTINGS, np.random.default_rng(0))


def sign_agreement_far(volume: LabelVolume, sample: Sample) -> float:
    """Share of query points farther than one voxel from a class surface whose SDF sign
    matches the label volume's nearest voxel, over all present classes."""
    arrays = sample.arrays
    scale = float(arrays["scale"])
    points = np.concatenate([arrays["vol_points"], arrays["near_points"]]).astype(np.float64)
    sdf = np.concatenate([arrays["vol_sdf"], arrays["near_sdf"]])
    nearest_class = volume.class_at(arrays["center"] + scale * points)
    one_voxel = float(np.linalg.norm(volume.spacing)) / scale
    agree = checked = 0
    for class_index in np.flatnonzero(arrays["class_present"]) + 1:
        column = sdf[:, class_index - 1]
        far = np.abs(column) > one_voxel
        agree += int(((column[far] < 0) == (nearest_class[far] == class_index)).sum())
        checked += int(far.sum())
    return agree / checked


def test_arrays_follow_the_contract(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    volume, sample = phantom_sample
    a = sample.arrays
    expected = {
        "surface_points": (np.float32, (20_000, 3)),
        "surface_labels": (np.uint8, (20_000,)),
        "surface_normals": (np.float32, (20_000, 3)),
        "vol_points": (np.float32, (20_000, 3)),
        "vol_sdf": (np.float32, (20_000, 10)),
        "near_points": (np.float32, (20_000, 3)),
        "near_sdf": (np.float32, (20_000, 10)),
        "class_present": (np.bool_, (10,)),
        "center": (np.float32, (3,)),
        "scale": (np.float32, ()),
        "affine": (np.float64, (4, 4)),
        "shape": (np.int64, (3,)),
        "spacing": (np.float32, (3,)),
    }
    assert set(a) == set(expected)
    for key, (dtype, shape) in expected.items():
        assert a[key].dtype == dtype, key
        assert a[key].shape == shape, key
    assert a["class_present"].all()
    assert set(np.unique(a["surface_labels"])) == set(range(1, 11))
    assert np.abs(a["vol_points"]).max() <= 1
    assert np.allclose(np.linalg.norm(a["surface_normals"], axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(a["spacing"], volume.spacing, rtol=1e-6)
    np.testing.assert_array_equal(a["shape"], volume.shape)


def test_distances_match_brute_force(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    _, sample = phantom_sample
    a = sample.arrays
    rng = np.random.default_rng(1)
    scale = float(a["scale"])
    for key_points, key_sdf in (("vol_points", "vol_sdf"), ("near_points", "near_sdf")):
        for index in rng.choice(len(a[key_points]), 25, replace=False):
            point = a["center"].astype(np.float64) + scale * a[key_points][index].astype(np.float64)
            for class_index in (1, 2, 6, 10):
                triangles = sample.surfaces[class_index].triangles()
                exact = point_triangles_distance(point, triangles).min() / scale
                stored = abs(float(a[key_sdf][index, class_index - 1]))
                assert stored == pytest.approx(exact, abs=1e-5), (key_points, index, class_index)


def test_signs_agree_with_the_label_volume(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    volume, sample = phantom_sample
    assert sign_agreement_far(volume, sample) >= 0.999


def test_band_signs_match_a_ray_free_reference(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    """Within half a voxel of a surface the mesh decides the sign; libigl's pseudonormal test
    (double precision, its own AABB tree) must agree on every point."""
    igl = pytest.importorskip("igl")
    volume, sample = phantom_sample
    a = sample.arrays
    points = a["center"] + float(a["scale"]) * a["near_points"].astype(np.float64)
    for class_index in (2, 4, 10):
        surface = sample.surfaces[class_index]
        stored = a["near_sdf"][:, class_index - 1] * float(a["scale"])
        band = np.abs(stored) < volume.half_voxel_diagonal_mm
        assert band.sum() > 100
        reference, _, _, _ = igl.signed_distance(
            points[band],
            surface.vertices,
            surface.faces.astype(np.int64),
            sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL,
        )
        nonzero = np.abs(reference) > 1e-4
        assert np.array_equal(np.sign(stored[band][nonzero]), np.sign(reference[nonzero]))


def test_surface_samples_lie_on_their_class_surface(
    phantom_sample: tuple[LabelVolume, Sample],
) -> None:
    _, sample = phantom_sample
    a = sample.arrays
    world = sample.normalization.to_world(a["surface_points"].astype(np.float64))
    normals = a["surface_normals"].astype(np.float64)
    for class_index, surface in sample.surfaces.items():
        mine = a["surface_labels"] == class_index
        distance, _ = SurfaceDistance(surface).closest(world[mine])
        assert distance.max() < 1e-3  # mm; float32 storage of normalized points
        # outward normals: a small step along the normal leaves the class, against it enters
        # (a few samples sit at concave creases, where a step can cross another face)
        step = 0.2 * float(np.min(a["spacing"]))
        on_surface, outward = world[mine][:60], normals[mine][:60]
        assert _inside_bywinding_number(surface, on_surface - step * outward).mean() > 0.95, (
            class_index
        )
        assert _inside_bywinding_number(surface, on_surface + step * outward).mean() < 0.05, (
            class_index
        )


def _inside_bywinding_number(surface, points: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Generalised winding number > 0.5 (an independent inside test, no ray casting)."""
    return np.concatenate(
        [winding_number(surface, chunk) > 0.5 for chunk in np.array_split(points, 6)]
    )


def test_surface_samples_are_area_uniform(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    _, sample = phantom_sample
    areas = {c: s.face_areas_and_normals()[0].sum() for c, s in sample.surfaces.items()}
    total = sum(areas.values())
    labels = sample.arrays["surface_labels"]
    for class_index, area in areas.items():
        share = (labels == class_index).mean()
        assert share == pytest.approx(area / total, abs=0.01)


def test_near_points_use_two_scales(phantom_sample: tuple[LabelVolume, Sample]) -> None:
    _, sample = phantom_sample
    a = sample.arrays
    nearest = np.abs(a["near_sdf"]).min(axis=1)
    half = len(nearest) // 2
    # an isotropic 3-D Gaussian offset of sigma s lies about 0.8 s from a plane on average
    assert np.median(nearest[:half]) < 0.005
    assert 0.01 < np.median(nearest[half:]) < 0.05


def test_absent_class_gets_the_far_value(small_phantom: Path) -> None:
    volume = load_label_volume(small_phantom, load_label_table("default"))
    volume.classes[volume.classes == 9] = 0  # no inferior vena cava
    sample = prepare_sample(volume, SampleSettings(2000, 2000, 2000), np.random.default_rng(0))
    a = sample.arrays
    assert not a["class_present"][8] and a["class_present"].sum() == 9
    assert np.all(a["vol_sdf"][:, 8] == ABSENT_SDF) and np.all(a["near_sdf"][:, 8] == ABSENT_SDF)
    assert 9 not in a["surface_labels"]


def test_fixed_scale_keeps_size_and_fit_fills_the_cube(small_phantom: Path) -> None:
    volume = load_label_volume(small_phantom, load_label_table("default"))
    few = dict(surface_points=3000, vol_points=100, near_points=100)
    fixed = prepare_sample(volume, SampleSettings(**few), np.random.default_rng(0))
    fit = prepare_sample(volume, SampleSettings(**few, normalize="fit"), np.random.default_rng(0))
    assert float(fixed.arrays["scale"]) == 100.0
    extent = np.abs(fit.arrays["surface_points"]).max()
    assert 0.9 < extent <= 1.0
    # both frames map back to the same world surface points
    for sample in (fixed, fit):
        world = sample.arrays["center"] + sample.arrays["scale"] * sample.arrays["surface_points"]
        distance, _ = SurfaceDistance(sample.surfaces[1]).closest(
            world[sample.arrays["surface_labels"] == 1].astype(np.float64)
        )
        assert distance.max() < 1e-3


def test_orientation_is_honoured(small_phantom: Path, tmp_path: Path) -> None:
    """The same anatomy stored flipped and permuted gives the same world surfaces."""
    import nibabel as nib

    image = nib.load(small_phantom)
    labels = np.asarray(image.dataobj)
    flipped = np.flip(labels, axis=0).transpose(2, 0, 1)
    # voxel (i, j, k) of `flipped` is voxel (n - 1 - j, k, i) of the original
    n = labels.shape[0]
    original_from_flipped = np.array(
        [[0, -1, 0, n - 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    affine = image.affine @ original_from_flipped
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(flipped, affine), path)
    table = load_label_table("default")
    settings = SampleSettings(2000, 2000, 2000)
    original = prepare_sample(
        load_label_volume(small_phantom, table), settings, np.random.default_rng(0)
    )
    moved = prepare_sample(load_label_volume(path, table), settings, np.random.default_rng(0))
    np.testing.assert_allclose(original.arrays["center"], moved.arrays["center"], atol=1e-4)
    for class_index in (1, 6):
        a, b = original.surfaces[class_index], moved.surfaces[class_index]
        assert a.enclosed_volume() == pytest.approx(b.enclosed_volume(), rel=1e-6)
        np.testing.assert_allclose(a.vertices.mean(axis=0), b.vertices.mean(axis=0), atol=1e-6)


@pytest.mark.slow
def test_real_heart_signs_and_distances(real_heart: Path) -> None:
    volume = load_label_volume(real_heart, load_label_table("mmwhs"))
    sample = prepare_sample(
        volume, SampleSettings(20_000, 20_000, 20_000), np.random.default_rng(0)
    )
    assert sign_agreement_far(volume, sample) >= 0.999
    assert sample.arrays["class_present"].tolist() == [True] * 7 + [False] * 3
    a = sample.arrays
    scale = float(a["scale"])
    for index in range(10):
        point = a["center"].astype(np.float64) + scale * a["vol_points"][index].astype(np.float64)
        exact = point_triangles_distance(point, sample.surfaces[6].triangles()).min() / scale
        assert abs(float(a["vol_sdf"][index, 5])) == pytest.approx(exact, abs=1e-5)
