"""Training volumes from real subjects: each one another plausible heart, made from a real one.

Two subjects are few, so the variety comes from here. A volume is resampled from its subject
through, in order from the output back to the input:

- a scan of its own: CT-like (fine in-plane spacing, thin slices) or MRI-like (coarser, thicker
  slices), axis-aligned in RAS+, around the transformed heart with a margin;
- a global similarity with anisotropy: rotation, scale per axis, translation;
- a smooth random deformation (displacements on a coarse lattice, interpolated);
- each structure scaled about its own centre (weighted by a blurred mask of the structure, so
  neighbours blend);
then the great vessels may be cut where a scan's field of view would end (the aorta, pulmonary
artery and superior vena cava from above, the inferior vena cava from below). Classes the subject
lacks stay absent. Labels are sampled by nearest neighbour: every voxel keeps one class.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from heartvec.volume import LabelVolume

CUT_FROM_ABOVE = (6, 7, 8)  # aorta, pulmonary artery, superior vena cava
CUT_FROM_BELOW = (9,)  # inferior vena cava
_SLAB_VOXELS = 1 << 22  # output voxels resampled at once (their coordinates: ~100 MB)


@dataclass(frozen=True)
class AugmentRanges:
    """How far a generated heart may differ from its subject (uniform draws within each).

    Args:
        rotation_deg: about a random axis.
        scale: the global scale.
        anisotropy: an extra scale per axis, 1 +- this.
        shift_mm: translation per axis.
        structure_scale: each structure's own scale, 1 +- this.
        warp_mm: standard deviation of the smooth deformation's displacements.
        warp_lattice_mm: spacing of the lattice they are drawn on (larger: smoother).
        cut_probability: of each great vessel being cut; the cut keeps 40-90% of its height.
        mri_probability: of an MRI-like scan instead of a CT-like one.
        ct_spacing_mm: (in-plane, slice) ranges of a CT-like scan.
        mri_spacing_mm: (in-plane, slice) ranges of an MRI-like scan.
    """

    rotation_deg: float = 12.0
    scale: tuple[float, float] = (0.9, 1.1)
    anisotropy: float = 0.06
    shift_mm: float = 8.0
    structure_scale: float = 0.1
    warp_mm: float = 3.0
    warp_lattice_mm: float = 40.0
    cut_probability: float = 0.4
    mri_probability: float = 0.3
    ct_spacing_mm: tuple[tuple[float, float], tuple[float, float]] = ((0.5, 1.0), (0.6, 2.0))
    mri_spacing_mm: tuple[tuple[float, float], tuple[float, float]] = ((1.2, 2.0), (1.5, 3.0))

    def scaled(self, strength: float) -> AugmentRanges:
        """These ranges with every departure from the subject times `strength` (0: the subject's
        shape in a scan of its own; 1: these; 2: twice the rotation, scale, anisotropy,
        translation, per-structure scale and deformation). The scans and vessel cuts stay.

        Raises:
            ValueError: `strength` outside [0, MAX_STRENGTH].
        """
        if not 0.0 <= strength <= MAX_STRENGTH:
            raise ValueError(f"strength {strength}: need 0 to {MAX_STRENGTH:g}")
        if strength == 1.0:
            return self  # exactly these, whatever 1 - (1 - low) rounds to for other ranges
        low, high = self.scale
        return replace(
            self,
            rotation_deg=self.rotation_deg * strength,
            scale=(1 - (1 - low) * strength, 1 + (high - 1) * strength),
            anisotropy=self.anisotropy * strength,
            shift_mm=self.shift_mm * strength,
            structure_scale=self.structure_scale * strength,
            warp_mm=self.warp_mm * strength,
        )


MAX_STRENGTH = 3.0
"""The most `AugmentRanges.scaled` allows: at 3 the defaults' global scale spans 0.7-1.3 and
each structure's another 0.7-1.3 (1.75 already lost on real hearts, BENCHMARKS "The checkpoint
alone against training: strength175")."""


def augment(
    volume: LabelVolume, rng: np.random.Generator, ranges: AugmentRanges = AugmentRanges()
) -> tuple[np.ndarray, np.ndarray]:
    """Another heart from `volume`: (uint8 (X, Y, Z) class indices, float64 (4, 4) affine)."""
    present = [int(c) for c in np.flatnonzero(volume.class_present()) + 1]
    foreground = np.argwhere(volume.classes > 0)
    corners = volume.world_from_voxel(
        np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        * (foreground.max(axis=0) - foreground.min(axis=0))
        + foreground.min(axis=0)
    )
    centre = (corners.min(axis=0) + corners.max(axis=0)) / 2
    half = (corners.max(axis=0) - corners.min(axis=0)) / 2

    # output world -> subject world: p_in = centre + M^-1 (p_out - centre - shift)
    matrix = _rotation(rng, ranges.rotation_deg) * (
        rng.uniform(*ranges.scale) * (1 + rng.uniform(-ranges.anisotropy, ranges.anisotropy, 3))
    )
    shift = rng.uniform(-ranges.shift_mm, ranges.shift_mm, 3)
    inverse = np.linalg.inv(matrix)
    reach = np.abs(matrix) @ half * (1 + ranges.structure_scale) + 2 * ranges.warp_mm + 10.0
    spacing = _scan_spacing(rng, ranges)
    counts = np.ceil(2 * reach / spacing).astype(int) + 1
    low = centre + shift - reach
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = low

    warp = _Warp(rng, low, counts * spacing, ranges)
    structures = _StructureScaling(volume, present, rng, ranges)
    voxel_from_world = np.linalg.inv(volume.affine)
    labels = np.zeros(counts, dtype=np.uint8)
    per_slab = max(1, _SLAB_VOXELS // int(counts[0] * counts[1]))
    ij = np.stack(np.meshgrid(np.arange(counts[0]), np.arange(counts[1]), indexing="ij"), -1)
    for first in range(0, counts[2], per_slab):
        ks = np.arange(first, min(first + per_slab, counts[2]))
        ijk = np.concatenate(
            [np.broadcast_to(ij[:, :, None, :], (*ij.shape[:2], len(ks), 2)),
             np.broadcast_to(ks[None, None, :, None], (*ij.shape[:2], len(ks), 1))], axis=-1,
        ).reshape(-1, 3)  # fmt: skip
        world = low + ijk * spacing
        world = world + warp(world)
        subject = centre + (world - centre - shift) @ inverse.T
        subject = structures(subject)
        index = subject @ voxel_from_world[:3, :3].T + voxel_from_world[:3, 3]
        sampled = map_coordinates(volume.classes, index.T, order=0, mode="constant", cval=0)
        labels[:, :, ks] = sampled.reshape(counts[0], counts[1], len(ks))
    _cut_vessels(labels, affine, present, rng, ranges.cut_probability)
    return labels, affine


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _scan_spacing(rng: np.random.Generator, ranges: AugmentRanges) -> np.ndarray:
    """(3,) mm: in-plane along x and y, the slices along z."""
    in_plane, thickness = (
        ranges.mri_spacing_mm if rng.random() < ranges.mri_probability else ranges.ct_spacing_mm
    )
    step = rng.uniform(*in_plane)
    return np.array([step, step, rng.uniform(*thickness)])


class _Warp:
    """A smooth random displacement field (mm) over a box: normal draws on a lattice, cubic
    interpolation between."""

    def __init__(
        self, rng: np.random.Generator, low: np.ndarray, size: np.ndarray, ranges: AugmentRanges
    ) -> None:
        self.low, self.step = low, ranges.warp_lattice_mm
        nodes = np.ceil(size / self.step).astype(int) + 3
        self.field = rng.normal(0.0, ranges.warp_mm, (3, *nodes))

    def __call__(self, world: np.ndarray) -> np.ndarray:
        lattice = ((world - self.low) / self.step + 1).T
        return np.stack(
            [map_coordinates(component, lattice, order=3, mode="nearest")
             for component in self.field], axis=1,
        )  # fmt: skip


class _StructureScaling:
    """Each structure scaled about its centre by its own factor, as a displacement weighted by a
    blurred mask of the structure (on a 4 mm lattice), so that where structures meet their
    displacements blend."""

    LATTICE_MM = 4.0
    BLUR_MM = 6.0

    def __init__(
        self,
        volume: LabelVolume,
        present: list[int],
        rng: np.random.Generator,
        ranges: AugmentRanges,
    ) -> None:
        step = np.maximum(1, np.round(self.LATTICE_MM / volume.spacing).astype(int))
        coarse = volume.classes[:: step[0], :: step[1], :: step[2]]
        self.lattice_from_world = np.linalg.inv(volume.affine @ np.diag([*step, 1.0]))
        sigma = self.BLUR_MM / (volume.spacing * step)
        weights = np.stack([gaussian_filter((coarse == c).astype(np.float32), sigma)
                            for c in present])  # fmt: skip
        self.weights = weights / np.maximum(weights.sum(axis=0, keepdims=True), 1.0)
        self.centres = np.array([
            volume.world_from_voxel(np.argwhere(volume.classes == c).mean(axis=0)) for c in present
        ])  # fmt: skip
        factors = rng.uniform(1 - ranges.structure_scale, 1 + ranges.structure_scale, len(present))
        self.shrink = 1 / factors - 1  # the subject's point is nearer the centre when it grows

    def __call__(self, world: np.ndarray) -> np.ndarray:
        lattice = (world @ self.lattice_from_world[:3, :3].T + self.lattice_from_world[:3, 3]).T
        moved = world.copy()
        for weights, centre, shrink in zip(self.weights, self.centres, self.shrink, strict=True):
            weight = map_coordinates(weights, lattice, order=1, mode="constant", cval=0.0)
            moved += (shrink * weight)[:, None] * (world - centre)
        return moved


def _cut_vessels(
    labels: np.ndarray,
    affine: np.ndarray,
    present: list[int],
    rng: np.random.Generator,
    probability: float,
) -> None:
    """Cut great vessels where a field of view would end: the voxels of the vessel above (or
    below, for the inferior vena cava) a height keeping 40-90% of its extent become background."""
    z_world = affine[2, 2] * np.arange(labels.shape[2]) + affine[2, 3]
    for class_index in (*CUT_FROM_ABOVE, *CUT_FROM_BELOW):
        if class_index not in present or rng.random() >= probability:
            continue
        slices = np.flatnonzero((labels == class_index).any(axis=(0, 1)))
        if len(slices) < 4:
            continue
        bottom, top = z_world[slices[0]], z_world[slices[-1]]
        kept = rng.uniform(0.4, 0.9)
        if class_index in CUT_FROM_ABOVE:
            removed = z_world > bottom + kept * (top - bottom)
        else:
            removed = z_world < top - kept * (top - bottom)
        region = labels[:, :, removed]
        region[region == class_index] = 0
        labels[:, :, removed] = region
