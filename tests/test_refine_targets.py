"""The refinement's surface fit points: by area (class balance 0, the earlier draw) or with an
even share per class, each point on its own class's surface, thin classes no longer starved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from heartvec.distance import SurfaceDistance
from heartvec.labels import load_label_table
from heartvec.normalization import fixed_normalization
from heartvec.reconstruction.refine import RefineSettings
from heartvec.reconstruction.refine_steps import minibatch_indices
from heartvec.reconstruction.refine_targets import fit_surface_points, start_targets
from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface, class_surfaces
from heartvec.volume import load_label_volume

COUNT = 8192


@pytest.fixture(scope="module")
def surfaces(small_phantom: Path) -> dict[int, Surface]:
    return class_surfaces(load_label_volume(small_phantom, load_label_table("default")))


def area_shares(surfaces: dict[int, Surface]) -> dict[int, float]:
    areas = {c: float(s.face_areas_and_normals()[0].sum()) for c, s in surfaces.items()}
    total = sum(areas.values())
    return {c: area / total for c, area in areas.items()}


def test_no_balance_is_the_area_draw(surfaces: dict[int, Surface]) -> None:
    points, classes = fit_surface_points(surfaces, COUNT, 0.0, np.random.default_rng(3))
    expected, expected_classes, _ = sample_surfaces(surfaces, COUNT, np.random.default_rng(3))
    np.testing.assert_array_equal(points, expected)
    np.testing.assert_array_equal(classes, expected_classes)


@pytest.mark.parametrize("balance", [0.5, 1.0])
def test_each_class_gets_its_share_on_its_own_surface(
    surfaces: dict[int, Surface], balance: float
) -> None:
    points, classes = fit_surface_points(surfaces, COUNT, balance, np.random.default_rng(5))
    assert points.shape == (COUNT, 3) and classes.shape == (COUNT,)
    assert sorted(np.unique(classes).tolist()) == sorted(surfaces)
    shares = area_shares(surfaces)
    for class_index, surface in surfaces.items():
        mine = classes == class_index
        expected = COUNT * (balance / len(surfaces) + (1 - balance) * shares[class_index])
        # the even share is exact, the area share a binomial draw: within 5 sigma of it
        sigma = np.sqrt(COUNT * (1 - balance) * shares[class_index])
        assert abs(mine.sum() - expected) <= 5 * sigma + 1, class_index
        distance, _ = SurfaceDistance(surface).closest(points[mine])
        assert distance.max() < 1e-4, class_index
    thinnest = min(shares, key=shares.__getitem__)
    assert (classes == thinnest).mean() > 1.5 * shares[thinnest]


def test_the_fit_half_holds_every_class_evenly(surfaces: dict[int, Surface]) -> None:
    """The refinement fits the first half and holds out the second: the order is shuffled, so
    both halves hold every class in about its share."""
    _, classes = fit_surface_points(surfaces, COUNT, 1.0, np.random.default_rng(9))
    fit = classes[: COUNT // 2]
    expected = len(fit) / len(surfaces)
    for class_index in surfaces:
        assert abs((fit == class_index).sum() - expected) < 5 * np.sqrt(expected), class_index


def test_one_class_is_drawn_by_area(surfaces: dict[int, Surface]) -> None:
    one = {1: surfaces[1]}
    points, classes = fit_surface_points(one, 1000, 1.0, np.random.default_rng(0))
    assert (classes == 1).all() and len(points) == 1000


@pytest.mark.parametrize("balance", [-0.1, 1.5])
def test_a_share_outside_zero_to_one_is_refused(
    surfaces: dict[int, Surface], balance: float
) -> None:
    with pytest.raises(ValueError, match="class balance"):
        fit_surface_points(surfaces, 100, balance, np.random.default_rng(0))
    with pytest.raises(ValueError, match="class balance"):
        RefineSettings(class_balance=balance)


@pytest.mark.parametrize("points", [600, 2400])
def test_the_pool_holds_the_points_asked_for(
    small_phantom: Path, surfaces: dict[int, Surface], points: int
) -> None:
    """2 x points on the surfaces (every class), points near them and points in the volume
    to fit, and a quarter as many more of each kind held out, each with the exact SDF of every
    class: beyond the band where the surface decides the sign (half a voxel's diagonal), a
    query's own class (its voxel's label) is negative there."""
    volume = load_label_volume(small_phantom, load_label_table("default"))
    normalization = fixed_normalization(surfaces, 100.0)
    data = start_targets(volume, surfaces, normalization, 11, class_balance=1.0,
                         points=points).result()  # fmt: skip
    held = points // 4
    assert (data.fit_near, data.held_out_near) == (points, held)
    for part, share in ((data.fit, points), (data.held_out, held)):
        assert part["surface"].shape == (2 * share, 3) and part["labels"].shape == (2 * share,)
        assert part["queries"].shape == (2 * share, 3)
        assert part["sdf"].shape == (2 * share, volume.label_table.num_classes)
        assert sorted(np.unique(part["labels"]).tolist()) == sorted(surfaces)
    queries = np.concatenate([data.fit["queries"], data.held_out["queries"]])
    sdf = np.concatenate([data.fit["sdf"], data.held_out["sdf"]])
    assert len(np.unique(queries, axis=0)) == len(queries)  # no point in both parts
    world = normalization.to_world(queries)
    own = volume.class_at(world)
    inside = own > 0
    assert inside.sum() > points // 10
    sdf_mm = sdf[inside, own[inside] - 1] * normalization.scale
    clear = np.abs(sdf_mm) > volume.half_voxel_diagonal_mm
    assert clear.sum() > inside.sum() // 4
    assert (sdf_mm[clear] < 0).all()


def test_both_parts_hold_near_and_volume_points(
    small_phantom: Path, surfaces: dict[int, Surface]
) -> None:
    """The near-surface queries lie around the surfaces (half at a spread of 0.005, half at
    0.05, normalized), the volume queries mostly farther; each part holds both kinds (and both
    spreads), near ones first, so the held-out IoU measures the fit near the surfaces and away
    from them, and a step can draw from either."""
    volume = load_label_volume(small_phantom, load_label_table("default"))
    normalization = fixed_normalization(surfaces, 100.0)
    data = start_targets(volume, surfaces, normalization, 3, points=2000).result()
    for part, near in ((data.fit, data.fit_near), (data.held_out, data.held_out_near)):
        nearest = np.abs(part["sdf"]).min(axis=1)  # normalized distance to the nearest surface
        assert near > 0 and len(nearest) - near > 0
        close = (nearest[:near] < 0.01).mean()  # nearly all at 0.005, few at 0.05
        assert 0.4 < close < 0.8
        assert np.median(nearest[near:]) > 2 * np.median(nearest[:near])
        assert (nearest[near:] < 0.01).mean() < close / 2


@pytest.mark.parametrize("share", [0.0, 0.5, 0.75, 1.0])
def test_a_steps_queries_take_the_near_share(share: float) -> None:
    fit = {"surface": torch.zeros(1, 300, 3), "queries": torch.zeros(1, 1000, 3)}
    indices = minibatch_indices(fit, torch.Generator().manual_seed(0), 96, 50, 600, share)
    assert indices["surface"].shape == (50, 32) and indices["queries"].shape == (50, 64)
    near = (indices["queries"] < 600).sum(dim=1)
    assert (near == round(64 * share)).all()
    assert (indices["queries"] < 1000).all()
    for row in indices["queries"]:  # no point twice in a step
        assert len(torch.unique(row)) == 64
    everything = minibatch_indices(fit, torch.Generator().manual_seed(0), 96, 50, 1000, 0.5)
    assert (everything["queries"] < 1000).all() and everything["queries"].shape == (50, 64)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_near_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="near share"):
        RefineSettings(near_share=share)


@pytest.mark.parametrize("points", [0, 1])
def test_a_pool_too_small_to_halve_is_refused(points: int) -> None:
    with pytest.raises(ValueError, match="target points"):
        RefineSettings(target_points=points)
