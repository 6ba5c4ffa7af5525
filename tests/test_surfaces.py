"""Class surfaces at a working spacing: blocks of a fine scan's voxels give the surface a coarser
scan would, and a volume already at that spacing gives exactly the surface it gave before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from heartvec.labels import load_label_table
from heartvec.surfaces import block_factors, class_surfaces
from heartvec.volume import LabelVolume, load_label_volume

CT_SPACING = np.array([0.488, 0.488, 0.625])  # the real subjects' voxels


def ball_and_shell(spacing: np.ndarray) -> tuple[LabelVolume, np.ndarray]:
    """Class 2: a ball of radius 30 mm; class 1: the shell around it out to 40 mm."""
    shape = tuple(int(n) for n in np.ceil(90 / spacing))
    centre = np.array(shape) * spacing / 2
    world = np.indices(shape).transpose(1, 2, 3, 0) * spacing
    radius = np.linalg.norm(world - centre, axis=-1)
    classes = np.zeros(shape, np.uint8)
    classes[radius < 40] = 1
    classes[radius < 30] = 2
    affine = np.diag([*spacing, 1.0])
    return LabelVolume("ball", classes, affine, load_label_table("default"), {}), centre


def test_block_factors_stay_within_the_working_spacing() -> None:
    assert block_factors(CT_SPACING, 1.0).tolist() == [2, 2, 1]
    assert block_factors(np.array([0.355, 0.355, 0.5]), 1.0).tolist() == [2, 2, 2]
    assert block_factors(np.array([0.3, 1.0, 2.0]), 1.0).tolist() == [3, 1, 1]
    assert block_factors(CT_SPACING, None).tolist() == [1, 1, 1]


def test_a_volume_at_the_working_spacing_keeps_its_surfaces(small_phantom: Path) -> None:
    volume = load_label_volume(small_phantom, load_label_table("default"))
    before = class_surfaces(volume)
    after = class_surfaces(volume, float(volume.spacing.max()))
    assert sorted(before) == sorted(after)
    for index, surface in before.items():
        np.testing.assert_array_equal(surface.vertices, after[index].vertices)
        np.testing.assert_array_equal(surface.faces, after[index].faces)


def test_working_spacing_keeps_the_shapes_with_fewer_triangles() -> None:
    volume, centre = ball_and_shell(CT_SPACING)
    fine, coarse = class_surfaces(volume), class_surfaces(volume, 1.0)
    truth = {1: 4 / 3 * np.pi * (40**3 - 30**3), 2: 4 / 3 * np.pi * 30**3}
    for index in (1, 2):
        assert len(coarse[index].faces) < 0.4 * len(fine[index].faces)
        # the same volume as the voxels' surface, and within 0.3% of the true one
        assert coarse[index].enclosed_volume() == pytest.approx(fine[index].enclosed_volume(), 2e-3)
        assert coarse[index].enclosed_volume() == pytest.approx(truth[index], 3e-3)
    # the ball's surface: every vertex within 0.35 mm (under a voxel) of the 30 mm sphere
    radius = np.linalg.norm(coarse[2].vertices - centre, axis=1)
    assert np.abs(radius - 30).max() < 0.35
    # and the surfaces are where they were: at most half a block from the voxels' surface
    distance, _ = cKDTree(fine[2].vertices).query(coarse[2].vertices)
    assert distance.max() < 0.5


def test_real_heart_surfaces_at_one_millimetre(real_heart: Path) -> None:
    volume = load_label_volume(real_heart, load_label_table("mmwhs"))
    fine, coarse = class_surfaces(volume), class_surfaces(volume, 1.0)
    assert sorted(fine) == sorted(coarse)
    for index, surface in fine.items():
        assert len(coarse[index].faces) < 0.45 * len(surface.faces)
        assert coarse[index].enclosed_volume() == pytest.approx(surface.enclosed_volume(), 0.01)
        distance, _ = cKDTree(surface.vertices).query(coarse[index].vertices)
        assert np.percentile(distance, 95) < 0.5, volume.label_table.class_name(index)
