"""Synthetic whole-heart label phantoms with plausible anatomy, for tests, demos and training.

World frame: nibabel's RAS+ convention -- world x increases towards the patient's Right, y towards
Anterior, z towards Superior (millimetres). The patient's LEFT is therefore at LOWER x: the left
ventricle has a smaller x than the right atrium, and its apex points to -x, +y, -z.

Each heart is built from simple primitives placed in millimetres (independent of the voxel grid):
chambers are ellipsoids (the ventricles and atria cut by the atrioventricular valve plane), vessels
are tubes of varying radius along Catmull-Rom curves. Overlaps are resolved by `PAINT_ORDER`, so
neighbours touch without gaps and every voxel has exactly one label; each primitive is evaluated
only inside its own bounding box. The whole phantom spans
roughly 125 x 135 x 140 mm before the random global scaling of up to 15 %, so a 256 mm field of
view holds it with a wide margin and a 192 mm one (e.g. 96 voxels of 2 mm) nearly always does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRUCTURES: dict[int, str] = {
    1: "left_ventricle: LV blood pool, a prolate ellipsoid, plus the mitral and aortic orifices",
    2: "lv_myocardium: ~9 mm thick shell around the LV, closed at the base by a thin lid",
    3: "right_ventricle: blood pool wrapped around the septum as a crescent, plus outflow tract",
    4: "left_atrium: posterior, above the LV base",
    5: "right_atrium: right and above the RV",
    6: "aorta: root, ascending aorta, arch and descending stump",
    7: "pulmonary_artery: trunk from the RV outflow tract, bifurcating into two branch stumps",
    8: "superior_vena_cava: enters the RA from above",
    9: "inferior_vena_cava: enters the RA from below",
    10: "pulmonary_veins: four separate stumps entering the LA from left and right posterior",
}
"""Label value -> class name and what the phantom draws for it (the project's default table)."""

PAINT_ORDER: tuple[int, ...] = (10, 9, 7, 8, 6, 5, 4, 3, 2, 1)
"""Labels from lowest to highest priority: where primitives overlap, the later label wins. Chambers
beat vessels so that a vessel can start hidden inside its chamber; LV, myocardium, RV in that order
so that the septum (myocardium) separates the two ventricles."""

_GLOBAL_SCALE = (0.85, 1.15)
_MAX_ROTATION_DEG = 12.0
_MAX_SHIFT_MM = 10.0
_SHAPE_JITTER = 0.1  # relative, per structure dimension
_CURVE_JITTER_MM = 3.0
_TUBE_STEP_MM = 5.0  # chord deviation on the tightest bend (aortic arch) stays well below 1 mm
_VALVE_OVERLAP_MM = 3.0  # atria reach this far past the valve plane so they touch the ventricles
_BASE_LID_MM = 4.0  # myocardium over the LV base, so only the valve orifices open into it
_CATMULL_ROM_BASIS = 0.5 * np.array([[0, 2, 0, 0], [-1, 0, 1, 0], [2, -5, 4, -1], [-1, 3, -3, 1]])


@dataclass(frozen=True)
class _Ellipsoid:
    """Points p with sum_k (axes[k] . (p - centre) / semi_axes[k])^2 <= 1 on the side of the plane
    through `cut_point` that `cut_normal` points to. Millimetres."""

    label: int
    centre: np.ndarray
    axes: np.ndarray  # (3, 3) orthonormal rows
    semi_axes: np.ndarray
    cut_point: np.ndarray
    cut_normal: np.ndarray


@dataclass(frozen=True)
class _Tube:
    """Union of truncated cones between consecutive samples of a curve, millimetres. The start is
    rounded (it hides inside the parent chamber or vessel), the end is cut flat like a crop."""

    label: int
    points: np.ndarray  # (n, 3)
    radii: np.ndarray  # (n,)


_Shape = _Ellipsoid | _Tube


def make_phantom(seed: int, size: int = 256, spacing: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic heart.

    Args:
        seed: seeds `np.random.default_rng`; the same seed gives the same heart (in millimetres) on
            every grid.
        size: voxels along each axis.
        spacing: voxel edge length in millimetres; the field of view is size * spacing mm.

    Returns:
        labels: uint8 (size, size, size), values 0 (background) and the keys of `STRUCTURES`.
        affine: float64 (4, 4) voxel index -> world millimetres, RAS+, volume centre at the origin.

    Raises:
        ValueError: size < 1 or spacing <= 0.
    """
    if size < 1 or spacing <= 0:
        raise ValueError(f"need size >= 1 and spacing > 0, got size={size}, spacing={spacing}")
    rng = np.random.default_rng(seed)
    scale = rng.uniform(*_GLOBAL_SCALE)
    rotation = _rotation_matrix(np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, 3)))
    shift = rng.uniform(-_MAX_SHIFT_MM, _MAX_SHIFT_MM, 3)
    shapes = [_transform(s, scale, rotation, shift) for s in _canonical_heart(rng)]

    origin = -spacing * (size - 1) / 2.0
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    labels = np.zeros((size, size, size), dtype=np.uint8)
    for shape in sorted(shapes, key=lambda s: PAINT_ORDER.index(s.label)):
        if isinstance(shape, _Ellipsoid):
            _paint_ellipsoid(labels, shape, origin, spacing)
        else:
            _paint_tube(labels, shape, origin, spacing)
    return labels, affine


def _ras(right: float, anterior: float, superior: float) -> np.ndarray:
    """A world offset in millimetres; negative `right` is towards the patient's left."""
    return np.array([right, anterior, superior], dtype=np.float64)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _canonical_heart(rng: np.random.Generator) -> list[_Shape]:
    """All primitives of one heart in millimetres, centred near the origin, before the global pose.

    Everything is placed relative to the mitral valve centre and the LV frame: the long axis points
    from the base to the apex (left, anterior, inferior), the septal axis from the LV across the
    septum into the RV (right, anterior).
    """

    def jitter(count: int) -> np.ndarray:
        return rng.uniform(1.0 - _SHAPE_JITTER, 1.0 + _SHAPE_JITTER, count)

    def jittered(*points: np.ndarray) -> list[np.ndarray]:
        return [p + rng.uniform(-_CURVE_JITTER_MM, _CURVE_JITTER_MM, 3) for p in points]

    def tube(label: int, nodes: list[np.ndarray], radii: list[float]) -> _Tube:
        return _Tube(label, *_catmull_rom(np.array(nodes), np.array(radii) * jitter(1)))

    long_axis = _unit(_ras(-1.0, 1.0, -1.0))
    septal_axis = _unit(_ras(1.0, 1.0, 0.0))
    upper_axis = np.cross(septal_axis, long_axis)  # towards the LV's superior (anterior) wall
    lv_frame = np.stack([long_axis, septal_axis, upper_axis])
    world_frame = np.eye(3)
    mitral = _ras(3.0, -5.0, -5.0)

    def in_lv_frame(apical: float, septal: float, upper: float) -> np.ndarray:
        """A point given in mm from the mitral valve centre along the LV frame axes; a negative
        `apical` lies on the atrial side of the valve plane."""
        return mitral + np.array([apical, septal, upper]) @ lv_frame

    # Ventricles keep the apical side of the valve plane; atria the other side plus an overlap.
    atrial_cut = in_lv_frame(_VALVE_OVERLAP_MM, 0.0, 0.0)
    lv_semi = _ras(50.0, 26.0, 26.0) * jitter(3)
    lv_centre = in_lv_frame(0.6 * lv_semi[0], 0.0, 0.0)  # cavity 1.6 semi-axes long
    wall = 9.0 * jitter(1)
    # The myocardium closes the base with a thin lid, pierced by the mitral and aortic orifices.
    lid_top = in_lv_frame(-_BASE_LID_MM, 0.0, 0.0)
    lid_depth = _BASE_LID_MM + 0.5  # the orifices end flush with the top of the lid
    rv_centre = in_lv_frame(30.0, 28.0, 0.0)
    la_centre = mitral + _ras(-2.0, -15.0, 12.0)
    ra_centre = mitral + _ras(32.0, 6.0, 10.0)

    # The outflow tract ends flat at the pulmonary valve; the trunk starts just inside it, along
    # its last direction, so the two tubes join without a seam.
    outflow = tube(
        3,
        [rv_centre, *jittered(in_lv_frame(14.0, 42.0, 24.0), in_lv_frame(-6.0, 20.0, 36.0))],
        [12.0] * 3,
    )
    pulmonary_valve = outflow.points[-1]
    outflow_direction = _unit(pulmonary_valve - outflow.points[-2])
    outflow_lv = tube(
        1, [in_lv_frame(14.0, 9.0, 0.0), in_lv_frame(-lid_depth, 12.0, 6.0)], [13.0, 13.0]
    )
    aortic_valve = outflow_lv.points[-1]
    aortic_direction = _unit(aortic_valve - outflow_lv.points[-2])
    (bifurcation,) = jittered(mitral + _ras(-8.0, -6.0, 46.0))
    shapes: list[_Shape] = [
        _Ellipsoid(1, lv_centre, lv_frame, lv_semi, mitral, long_axis),
        _Ellipsoid(2, lv_centre, lv_frame, lv_semi + wall, lid_top, long_axis),
        tube(1, [in_lv_frame(10.0, -6.0, -2.0), in_lv_frame(-lid_depth, -6.0, -2.0)], [13.0, 13.0]),
        outflow_lv,
        _Ellipsoid(3, rv_centre, lv_frame, _ras(42.0, 30.0, 42.0) * jitter(3), mitral, long_axis),
        outflow,
        _Ellipsoid(
            4, la_centre, world_frame, _ras(32.0, 22.0, 24.0) * jitter(3), atrial_cut, -long_axis
        ),
        _Ellipsoid(
            5, ra_centre, world_frame, _ras(24.0, 24.0, 28.0) * jitter(3), atrial_cut, -long_axis
        ),
        tube(
            6,
            [
                aortic_valve - 3.0 * aortic_direction,  # hidden in the LV outflow orifice
                *jittered(
                    aortic_valve + 10.0 * aortic_direction,  # root
                    mitral + _ras(17.0, 10.0, 38.0),  # ascending, slightly right and anterior
                    mitral + _ras(2.0, -14.0, 62.0),  # top of the arch, over the PA bifurcation
                    mitral + _ras(-18.0, -38.0, 54.0),  # arch turning down, left-posterior
                    mitral + _ras(-22.0, -50.0, 22.0),  # descending, left of the spine
                    mitral + _ras(-20.0, -50.0, -20.0),
                    mitral + _ras(-18.0, -48.0, -50.0),
                ),
            ],
            [14.0, 14.0, 13.5, 13.0, 12.0, 11.0, 11.0, 11.0],
        ),
        # The left pulmonary artery continues the trunk; the right one branches off it.
        tube(
            7,
            [
                pulmonary_valve - 4.0 * outflow_direction,
                *jittered(pulmonary_valve + 14.0 * outflow_direction),
                bifurcation,
                *jittered(
                    bifurcation + _ras(-28.0, -14.0, 2.0), bifurcation + _ras(-44.0, -22.0, 0.0)
                ),
            ],
            [12.0, 12.0, 12.0, 9.0, 8.5],
        ),
        tube(
            7,
            [
                bifurcation,
                *jittered(
                    bifurcation + _ras(14.0, -10.0, 0.0), bifurcation + _ras(26.0, -12.0, 2.0)
                ),
            ],
            [10.0, 9.0, 8.5],
        ),
        tube(
            8,
            [
                ra_centre + _ras(4.0, -6.0, 8.0),
                *jittered(mitral + _ras(38.0, -4.0, 40.0), mitral + _ras(38.0, -8.0, 62.0)),
            ],
            [10.0, 10.0, 10.0],
        ),
        tube(
            9,
            [
                ra_centre + _ras(0.0, -4.0, -10.0),
                *jittered(mitral + _ras(33.0, -4.0, -30.0), mitral + _ras(33.0, -6.0, -58.0)),
            ],
            [11.0, 11.0, 11.0],
        ),
    ]
    for side in (-1.0, 1.0):  # patient's left (-x) and right (+x) pulmonary veins
        for height in (-1.0, 1.0):  # inferior and superior veins
            # Straight from deep inside the LA out through its posterolateral wall: a vein that
            # grazes the wall would leave islands where it pokes out.
            start = la_centre + _ras(8.0 * side, -4.0, 4.0 * height + 4.0)
            end = la_centre + _ras(40.0 * side, -24.0, 16.0 * height + 5.0)
            shapes.append(tube(10, [start, *jittered(end)], [6.0, 6.0]))
    return shapes


def _catmull_rom(nodes: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Samples about `_TUBE_STEP_MM` apart on the uniform Catmull-Rom spline through `nodes`
    (n, 3), with the radius (n,) interpolated along with the position."""
    control = np.column_stack([nodes, radii])
    padded = np.vstack([control[:1], control, control[-1:]])  # end tangents from the end nodes
    samples = [control[:1]]
    for i in range(len(control) - 1):
        count = max(
            1, int(np.ceil(np.linalg.norm(control[i + 1, :3] - control[i, :3]) / _TUBE_STEP_MM))
        )
        powers = (np.arange(1, count + 1) / count)[:, None] ** np.arange(4)
        samples.append(powers @ _CATMULL_ROM_BASIS @ padded[i : i + 4])
    curve = np.vstack(samples)
    return curve[:, :3], curve[:, 3]


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation by angles[0], angles[1], angles[2] radians about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _transform(shape: _Shape, scale: float, rotation: np.ndarray, shift: np.ndarray) -> _Shape:
    """The shape after p -> scale * rotation @ p + shift."""

    def move(point: np.ndarray) -> np.ndarray:
        return scale * point @ rotation.T + shift

    if isinstance(shape, _Tube):
        return _Tube(shape.label, move(shape.points), scale * shape.radii)
    return _Ellipsoid(
        shape.label,
        move(shape.centre),
        shape.axes @ rotation.T,
        scale * shape.semi_axes,
        move(shape.cut_point),
        rotation @ shape.cut_normal,
    )


def _voxel_box(
    low_mm: np.ndarray, high_mm: np.ndarray, origin: float, spacing: float, size: int
) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]] | None:
    """The voxel block covering the world box [low_mm, high_mm], clipped to the volume, and the
    world coordinates (mm, float32) of its voxel centres as three broadcastable axis vectors."""
    start = np.clip(np.floor((low_mm - origin) / spacing).astype(int), 0, size)
    stop = np.clip(np.ceil((high_mm - origin) / spacing).astype(int) + 1, 0, size)
    if np.any(stop <= start):
        return None
    block = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    coordinates = tuple(
        (origin + spacing * np.arange(a, b, dtype=np.float32)).reshape(
            [-1 if k == axis else 1 for k in range(3)]
        )
        for axis, (a, b) in enumerate(zip(start, stop, strict=True))
    )
    return block, coordinates


def _paint_ellipsoid(labels: np.ndarray, shape: _Ellipsoid, origin: float, spacing: float) -> None:
    half_extent = np.abs(shape.axes).T @ shape.semi_axes  # encloses the ellipsoid's bounding box
    box = _voxel_box(
        shape.centre - half_extent, shape.centre + half_extent, origin, spacing, labels.shape[0]
    )
    if box is None:
        return
    block, (x, y, z) = box
    cx, cy, cz = shape.centre.tolist()  # Python floats keep the arithmetic in float32
    x, y, z = x - cx, y - cy, z - cz
    radius2 = sum(
        ((ax * x + ay * y + az * z) / semi) ** 2
        for (ax, ay, az), semi in zip(shape.axes.tolist(), shape.semi_axes.tolist(), strict=True)
    )
    nx, ny, nz = shape.cut_normal.tolist()
    offset = float(shape.cut_normal @ (shape.cut_point - shape.centre))
    labels[block][(radius2 <= 1.0) & (nx * x + ny * y + nz * z >= offset)] = shape.label


def _paint_tube(labels: np.ndarray, shape: _Tube, origin: float, spacing: float) -> None:
    # One small box per segment: a box around the whole curve would be mostly empty.
    last = len(shape.points) - 2
    for index in range(last + 1):
        a, b = shape.points[index], shape.points[index + 1]
        radius_a, radius_b = shape.radii[index].item(), shape.radii[index + 1].item()
        reach = max(radius_a, radius_b)
        box = _voxel_box(
            np.minimum(a, b) - reach, np.maximum(a, b) + reach, origin, spacing, labels.shape[0]
        )
        if box is None:
            continue
        block, (x, y, z) = box
        x, y, z = x - a[0].item(), y - a[1].item(), z - a[2].item()
        dx, dy, dz = (b - a).tolist()
        along = (dx * x + dy * y + dz * z) / max(dx * dx + dy * dy + dz * dz, 1e-6)
        # Only the last segment stops at its end point: the vessel ends flat, like a crop.
        inside = (along <= 1.0) if index == last else np.True_
        along = np.clip(along, 0.0, 1.0)
        distance2 = (x - along * dx) ** 2 + (y - along * dy) ** 2 + (z - along * dz) ** 2
        inside = inside & (distance2 <= (radius_a + along * (radius_b - radius_a)) ** 2)
        labels[block][inside] = shape.label
