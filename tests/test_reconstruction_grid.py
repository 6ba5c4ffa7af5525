"""Octree-style band decoding: the same surfaces as the dense grid, for far fewer evaluations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.ndimage import map_coordinates
from skimage.measure import marching_cubes

from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import decode_grid, upsample2
from heartvec.reconstruction.meshes import class_meshes

CENTRES = np.array([[-0.3, 0.1, 0.0], [0.35, -0.2, 0.1], [0.0, 0.3, -0.35]])
RADII = np.array([0.25, 0.12, 0.03])  # the third: a small vessel, a few cells across


def spheres(points: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3): exact SDF of three spheres, one per class, truncated like the model's."""
    distance = np.linalg.norm(points[:, None, :] - CENTRES[None], axis=-1) - RADII
    return np.clip(distance, -0.1, 0.1) / 0.1


@pytest.mark.parametrize(("resolution", "max_fraction"), [(90, 0.3), (193, 0.08), (257, 0.05)])
def test_band_gives_the_dense_grids_surfaces(resolution: int, max_fraction: float) -> None:
    low, high = np.full(3, -0.7), np.full(3, 0.7)
    dense = decode_grid(spheres, low, high, resolution, units_per_distance=10, dense=True)
    band = decode_grid(spheres, low, high, resolution, units_per_distance=10)
    assert band.values.shape == dense.values.shape == (resolution,) * 3 + (3,)
    # the points evaluated grow with the surface area, not the volume
    assert band.evaluated < max_fraction * dense.evaluated
    for c in range(3):
        b, d = band.values[..., c], dense.values[..., c]
        assert np.array_equal(b < 0, d < 0)  # every sign, far points included
        # identical meshes: marching cubes reads only corners of cells with a sign change
        vb, fb, _, _ = marching_cubes(b, 0.0, spacing=tuple(band.spacing))
        vd, fd, _, _ = marching_cubes(d, 0.0, spacing=tuple(dense.spacing))
        np.testing.assert_allclose(vb, vd, atol=1e-5)  # float32 round-off
        assert np.array_equal(fb, fd)
        radius = np.linalg.norm(vb + low - CENTRES[c], axis=1)
        np.testing.assert_allclose(radius, RADII[c], atol=0.2 * band.spacing[0])


def test_band_points_grow_with_area_not_volume() -> None:
    low, high = np.full(3, -0.7), np.full(3, 0.7)
    coarse = decode_grid(spheres, low, high, 129, units_per_distance=10).evaluated
    fine = decode_grid(spheres, low, high, 257, units_per_distance=10).evaluated
    assert 2.5 < fine / coarse < 5.5  # about 4x for twice the resolution (dense: 8x)


def test_band_stays_narrow_for_a_flat_learned_like_sdf() -> None:
    """A learned SDF is flatter than a distance (here 0.3x, truncated far out): the distance
    test alone keeps most of the box, splitting fine cells on sign changes keeps the band
    narrow, and the signs and meshes stay those of the dense grid."""

    def flat(points: np.ndarray) -> np.ndarray:
        return 0.3 * spheres(points)

    low, high = np.full(3, -0.7), np.full(3, 0.7)
    dense = decode_grid(flat, low, high, 129, units_per_distance=10, dense=True)
    distance_only = decode_grid(flat, low, high, 129, units_per_distance=10, sign_levels=0)
    band = decode_grid(flat, low, high, 129, units_per_distance=10)
    assert band.evaluated < 0.5 * distance_only.evaluated
    assert band.evaluated < 0.2 * dense.evaluated
    for c in range(3):
        assert np.array_equal(band.values[..., c] < 0, dense.values[..., c] < 0)
        vb, fb, _, _ = marching_cubes(band.values[..., c], 0.0)
        vd, fd, _, _ = marching_cubes(dense.values[..., c], 0.0)
        np.testing.assert_allclose(vb, vd, atol=1e-4)
        assert np.array_equal(fb, fd)


def test_upsample2_is_trilinear() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 4))
    x = np.arange(5, dtype=np.float64)
    grid = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)  # (5, 5, 5, 3)
    linear = grid @ a[:3] + a[3]  # a linear function is reproduced exactly
    up = upsample2(linear[..., None])[..., 0]
    xf = np.arange(9) / 2
    fine = np.stack(np.meshgrid(xf, xf, xf, indexing="ij"), -1) @ a[:3] + a[3]
    np.testing.assert_allclose(up, fine, atol=1e-12)
    assert np.array_equal(upsample2(grid[..., :1] * b[0])[::2, ::2, ::2], grid[..., :1] * b[0])


@pytest.mark.parametrize("resampler", ["scipy", "torch"])
def test_label_volume_on_an_oblique_anisotropic_input_grid(resampler: str) -> None:
    """Each input voxel gets the class whose decoded SDF is negative there, through the input's
    affine (rotated, flipped, anisotropic); voxels beyond the decoded grid stay background.
    Both resamplers (scipy on CPUs, grid_sample on GPUs; here both on the CPU) agree."""
    from heartvec.labels import load_label_table
    from heartvec.normalization import Normalization
    from heartvec.reconstruction.meshes import label_volume
    from heartvec.volume import LabelVolume

    low, high = np.full(3, -0.7), np.full(3, 0.7)
    grid = decode_grid(spheres, low, high, 129, units_per_distance=10)
    normalization = Normalization(center=np.array([10.0, -20.0, 5.0]), scale=100.0)
    angle = np.deg2rad(30)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.1, 0.9, 1.6])
    affine[:3, 3] = [-60.0, -90.0, 80.0]
    shape = (140, 150, 100)
    volume = LabelVolume("synthetic", np.zeros(shape, np.uint8), affine,
                         load_label_table("default"), {0: int(np.prod(shape))})  # fmt: skip
    labels = label_volume(grid, normalization, volume, resampler=resampler)
    assert labels.shape == shape
    if resampler == "torch":  # voxel for voxel what the CPU path gives, but for rounding ties
        other = label_volume(grid, normalization, volume, resampler="scipy")
        assert (labels != other).sum() <= 1e-5 * labels.size
    ijk = np.argwhere(np.ones(shape, dtype=bool))
    normalized = normalization.to_normalized(volume.world_from_voxel(ijk))
    distance = np.linalg.norm(normalized[:, None] - CENTRES[None], axis=-1) - RADII  # (N, 3)
    inside = distance.min(axis=1) < 0
    expected = np.where(inside, distance.argmin(axis=1) + 1, 0)
    in_grid = np.all((normalized >= low) & (normalized <= high), axis=1)
    clear = (np.abs(distance).min(axis=1) > 2 * grid.spacing[0]) | ~in_grid
    got = labels.reshape(-1)
    assert np.array_equal(got[clear & in_grid], expected[clear & in_grid])
    assert not got[~in_grid].any()
    for c in (1, 2, 3):  # every sphere is there, the small one included
        assert (got == c).sum() > 0.8 * (expected == c).sum()
    # resampling each class over its own box only loses nothing: every voxel, classes
    # interpolated over the whole input grid
    sdf = np.stack(
        [
            map_coordinates(
                np.pad(grid.values[..., c], 1, constant_values=1e6),
                ((normalized - low) / grid.spacing + 1).T,
                order=1,
                mode="constant",
                cval=1e6,
                prefilter=False,
            )
            for c in range(3)
        ],
        axis=1,
    )
    brute = np.where(sdf.min(axis=1) < 0, sdf.argmin(axis=1) + 1, 0)
    assert (got != brute).sum() <= 1e-5 * got.size
    assert (got > 0).sum() > 1000


def test_overlaps_are_dice_and_iou_of_the_class_masks() -> None:
    from heartvec.reconstruction.metrics import overlaps

    rng = np.random.default_rng(3)
    reference = rng.integers(0, 4, size=(30, 40, 50)).astype(np.uint8)
    reconstructed = np.where(rng.random(reference.shape) < 0.3, 2, reference).astype(np.uint8)
    reconstructed[reconstructed == 3] = 0  # class 3 missed entirely
    got = overlaps(reference, reconstructed, [1, 2, 3, 7])
    for c in (1, 2, 3):
        a, b = reference == c, reconstructed == c
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert got[c]["dice"] == pytest.approx(dice) and got[c]["iou"] == pytest.approx(
            (a & b).sum() / (a | b).sum()
        )
    assert 0 < got[1]["dice"] < 1 and got[3] == {"dice": 0.0, "iou": 0.0}
    assert got[7] == {"dice": 1.0, "iou": 1.0}  # in neither: agreement


def test_stray_pieces_are_dropped_and_the_rest_kept() -> None:
    """A class's small piece far from its body goes, from the grid and so from its mesh; its
    body stays point for point; a class of two pieces of similar size (like the pulmonary
    veins) keeps both; with 0 nothing changes."""
    body, stray = np.array([-0.3, 0.0, 0.0]), np.array([0.45, 0.4, 0.4])
    pair = np.array([[0.3, -0.3, -0.2], [0.3, 0.0, -0.35]])

    def two_classes(points: np.ndarray) -> np.ndarray:
        def ball(centre: np.ndarray, radius: float) -> np.ndarray:
            return np.asarray(np.linalg.norm(points - centre, axis=1) - radius)

        first = np.minimum(ball(body, 0.25), ball(stray, 0.06))  # stray: 1.4% of the body
        second = np.minimum(ball(pair[0], 0.1), ball(pair[1], 0.08))  # 51% of the other
        return np.clip(np.stack([first, second], axis=1), -0.1, 0.1) / 0.1

    low, high = np.full(3, -0.7), np.full(3, 0.7)
    grid = decode_grid(two_classes, low, high, 97, units_per_distance=10, dense=True)
    before = grid.values.copy()
    kept_all, dropped = class_meshes(grid, Normalization(np.zeros(3), 1.0), 0.0)
    assert dropped == {}
    np.testing.assert_array_equal(grid.values, before)

    meshes, dropped = class_meshes(grid, Normalization(np.zeros(3), 1.0), 0.1)
    assert dropped == {1: 1}
    points = low + np.indices(grid.values.shape[:3]).reshape(3, -1).T * grid.spacing
    in_stray = np.linalg.norm(points - stray, axis=1).reshape(grid.values.shape[:3]) < 0.2
    assert (before[..., 0][in_stray] < 0).any() and (grid.values[..., 0][in_stray] > 0).all()
    np.testing.assert_array_equal(grid.values[..., 0][~in_stray], before[..., 0][~in_stray])
    np.testing.assert_array_equal(grid.values[..., 1], before[..., 1])
    # the other class's mesh is the one made without dropping; the body's is a part of it
    np.testing.assert_array_equal(meshes[2].vertices, kept_all[2].vertices)
    assert len(meshes[1].faces) < len(kept_all[1].faces)
    pieces = {  # marching cubes leaves a few lone degenerate triangles: not pieces
        c: [p for p in trimesh.Trimesh(m.vertices, m.faces).split(only_watertight=False)
            if len(p.faces) > 10]
        for c, m in meshes.items()
    }  # fmt: skip
    assert len(pieces[1]) == 1 and len(pieces[2]) == 2
    centre = pieces[1][0].vertices.mean(axis=0)
    np.testing.assert_allclose(centre, body, atol=grid.spacing[0])


def test_mesh_files_round_trip_through_trimesh(tmp_path: Path) -> None:
    """The PLY and GLB writers (numpy, no trimesh): trimesh reads back every class's vertices,
    triangles, colour and name; the GLB's header, chunks and accessors are as glTF 2.0 says."""
    import json
    import struct

    from heartvec.labels import load_label_table
    from heartvec.reconstruction.export import class_colour, write_meshes
    from heartvec.surfaces import Surface

    table = load_label_table("default")
    meshes = {}
    for class_index, centre, radius in zip((1, 6, 10), CENTRES, RADII, strict=True):
        sphere = trimesh.creation.icosphere(subdivisions=2 + class_index % 3, radius=100 * radius)
        meshes[class_index] = Surface(sphere.vertices + 100 * centre, sphere.faces.astype(np.int32))
    paths = write_meshes(meshes, table, tmp_path)
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == [
        "10_pulmonary_veins.ply", "1_left_ventricle.ply", "6_aorta.ply"
    ]  # fmt: skip
    for class_index, surface in meshes.items():
        read = trimesh.load(paths[class_index], process=False)
        np.testing.assert_allclose(read.vertices, surface.vertices, atol=1e-4)  # float32
        assert np.array_equal(read.faces, surface.faces)
        assert (read.visual.vertex_colors == class_colour(class_index)).all()
        assert read.is_watertight and read.volume > 0
    scene = trimesh.load(tmp_path / "heart.glb")
    assert set(scene.geometry) == {table.class_name(c) for c in meshes}
    for class_index, surface in meshes.items():
        geometry = scene.geometry[table.class_name(class_index)]
        np.testing.assert_allclose(geometry.vertices, surface.vertices, atol=1e-4)
        assert np.array_equal(geometry.faces, surface.faces)
    data = (tmp_path / "heart.glb").read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_length % 4 == 0
    gltf = json.loads(data[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert bin_type == b"BIN\0" and bin_length == gltf["buffers"][0]["byteLength"]
    assert [n["name"] for n in gltf["nodes"]] == [table.class_name(c) for c in sorted(meshes)]
    for accessor in gltf["accessors"]:
        view = gltf["bufferViews"][accessor["bufferView"]]
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= bin_length
    colours = [m["pbrMetallicRoughness"]["baseColorFactor"] for m in gltf["materials"]]
    assert colours[0] == pytest.approx([31 / 255, 119 / 255, 180 / 255, 1.0])  # tab10 blue


def test_mesh_rendering_draws_the_nearest_surface_in_its_class_colour() -> None:
    """Two spheres on the line of sight: the near small one (class 1) covers the middle of the
    picture, the far large one (class 2) shows around it, shaded darker towards its rim; the
    background stays white; no mesh gives a white picture."""
    from heartvec.reconstruction.export import class_colour
    from heartvec.reconstruction.render import ANTERIOR_VIEW, render_meshes
    from heartvec.surfaces import Surface

    towards = np.asarray(ANTERIOR_VIEW) / np.linalg.norm(ANTERIOR_VIEW)
    near = trimesh.creation.icosphere(subdivisions=5, radius=10.0)
    far = trimesh.creation.icosphere(subdivisions=5, radius=30.0)
    meshes = {
        1: Surface(near.vertices + 60 * towards, near.faces.astype(np.int32)),
        2: Surface(far.vertices, far.faces.astype(np.int32)),
    }
    image = render_meshes(meshes, pixels=200)
    assert image.shape == (200, 200, 3)

    def hue(pixel: np.ndarray) -> np.ndarray:  # the colour up to its shade
        return pixel / pixel.max()

    blue, orange = (class_colour(c)[:3] / 255 for c in (1, 2))
    # the picture spans the far sphere (60 mm wide, 200 px): the near one is ~33 px wide
    middle = image[100, 100]
    np.testing.assert_allclose(hue(middle), hue(blue), atol=0.02)
    assert middle.max() > 0.85 * blue.max()  # faces the camera and the light: bright
    ring = image[100, 100 + 40]  # 24 px beyond the near sphere's rim
    np.testing.assert_allclose(hue(ring), hue(orange), atol=0.02)
    rim = image[100, 190]  # near the far sphere's edge, which turns away from the light
    assert rim.max() < ring.max()
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 1).all()  # white background outside the sphere
    covered = (image < 1).any(axis=2).mean()
    assert 0.7 < covered < np.pi / 4 + 0.02  # a disc filling the square, without holes
    assert (render_meshes({}, pixels=50) == 1).all()
    empty = Surface(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int32))
    assert (render_meshes({3: empty}, pixels=50) == 1).all()
    from_above = render_meshes(meshes, pixels=50, towards_camera=(0.0, 0.0, 1.0))
    np.testing.assert_allclose(hue(from_above[25, 25]), hue(orange), atol=0.02)  # near: off-axis


def test_supports_keep_a_class_near_where_the_input_has_it() -> None:
    """A class's piece 45 mm from where the input has it (half its size: `min_piece` keeps it)
    is set outside; a class drawn 3 mm larger than the input's stays whole; every negative point
    left lies within MARGIN_MM of its class in the input; the supports survive their arrays."""
    from scipy.ndimage import distance_transform_edt

    from heartvec.labels import load_label_table
    from heartvec.normalization import fixed_normalization
    from heartvec.reconstruction.decoding import grid_box
    from heartvec.reconstruction.supports import MARGIN_MM, ClassSupports
    from heartvec.surfaces import class_surfaces
    from heartvec.volume import LabelVolume

    size = 120  # 1 mm voxels, world = voxel index
    ijk = np.indices((size,) * 3).transpose(1, 2, 3, 0)
    balls = {1: (np.array([40.0, 60.0, 60.0]), 14.0), 2: (np.array([80.0, 60.0, 60.0]), 10.0)}
    classes = np.zeros((size,) * 3, dtype=np.uint8)
    for class_index, (centre, radius) in balls.items():
        classes[np.linalg.norm(ijk - centre, axis=-1) <= radius] = class_index
    table = load_label_table("default")
    volume = LabelVolume("balls", classes, np.eye(4), table, {})
    surfaces = class_surfaces(volume)
    normalization = fixed_normalization(surfaces, 100.0)
    low, high = grid_box(normalization, surfaces)
    supports = ClassSupports.of_input(volume, surfaces, normalization, low, high)
    stray = balls[1][0] + np.array([0.0, 45.0, 0.0])

    def drawn(points: np.ndarray) -> np.ndarray:
        world = normalization.to_world(points)
        sdf = np.full((len(points), table.num_classes), 0.1)
        first = np.minimum(
            np.linalg.norm(world - balls[1][0], axis=1) - balls[1][1],
            np.linalg.norm(world - stray, axis=1) - 0.8 * balls[1][1],
        )
        second = np.linalg.norm(world - balls[2][0], axis=1) - (balls[2][1] + 3.0)
        sdf[:, 0], sdf[:, 1] = first / 100, second / 100  # normalized units
        return np.clip(sdf, -0.1, 0.1) / 0.1

    grid = decode_grid(drawn, low, high, 97, units_per_distance=10, dense=True)
    before = grid.values.copy()
    removed = supports.apply(grid)
    points = normalization.to_world(
        low + np.indices(grid.values.shape[:3]).reshape(3, -1).T * grid.spacing
    ).reshape(*grid.values.shape[:3], 3)
    near_stray = np.linalg.norm(points - stray, axis=-1) < 10
    assert set(removed) == {1} and (before[..., 0][near_stray] < 0).any()
    assert (grid.values[..., 0][near_stray] > 0).all()
    np.testing.assert_array_equal(grid.values[..., 1], before[..., 1])  # 3 mm out: kept
    for class_index in (1, 2):
        distance_mm = distance_transform_edt(classes != class_index)  # 1 mm voxels
        voxel = np.clip(np.rint(points[grid.values[..., class_index - 1] < 0]), 0, size - 1)
        far = distance_mm[tuple(voxel.astype(int).T)]
        assert far.max() <= MARGIN_MM, (class_index, far.max())
    again = ClassSupports.from_arrays(supports.arrays())
    np.testing.assert_array_equal(again.allowed, supports.allowed)
    assert again.cell == supports.cell and again.margin_mm == supports.margin_mm
