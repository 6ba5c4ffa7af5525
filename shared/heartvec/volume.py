"""Loading and validating label volumes (NIfTI-1/2) into a `LabelVolume`.

Every problem a user can cause is reported as one `InputError` naming the file and the problem;
the header is checked before any voxel is read, so an absurd size costs no memory.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib

from heartvec.errors import InputError
from heartvec.labels import LabelTable

# its stub declares an instance, not the class
_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)
MAX_VOXELS = 1024**3
"""Default upper bound on the voxel count of one volume (a 1 GiB uint8 class volume)."""

_SLAB = 32  # slices converted at a time, so a float64 copy of a large volume never exists
_SCAN_VOXELS = 1 << 20  # voxels `scan_label_file` holds at a time (its memory stays ~10 MB)


@dataclass(frozen=True)
class VoxelGrid:
    """A volume's grid without its voxels: what a label volume is written on.

    Args:
        affine: float64 (4, 4) voxel index -> world millimetres, RAS+.
        shape: voxels along each array axis.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def world_from_voxel(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (may be fractional) -> (N, 3) world mm."""
        return np.asarray(ijk @ self.affine[:3, :3].T + self.affine[:3, 3])


@dataclass
class LabelVolume:
    """A validated label volume with its labels mapped to class indices.

    Args:
        path: where it was read from.
        classes: uint8 (X, Y, Z) class index per voxel, 0 = background.
        affine: float64 (4, 4) voxel index -> world millimetres, RAS+.
        label_table: the table that mapped label values to classes.
        label_counts: voxels per label value found in the file, 0 included.
        unknown_labels: values not in the table, set to background (only with
            `ignore_unknown_labels`).
        origin: where this volume's first voxel lies in the file's grid: (0, 0, 0) for the
            whole file, a crop's corner otherwise (`crop`).
    """

    path: str
    classes: np.ndarray
    affine: np.ndarray
    label_table: LabelTable
    label_counts: dict[int, int]
    unknown_labels: list[int] = field(default_factory=list)
    origin: tuple[int, int, int] = (0, 0, 0)
    # where the file's nonzero voxels lie (first, one past last), known from loading
    nonzero_box: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

    def foreground_box(self, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(3,) first and (3,) one-past-last voxel index of the foreground, `margin` voxels
        wider on each side within the grid."""
        start = np.zeros(3, dtype=int) if self.nonzero_box is None else self.nonzero_box[0]
        stop = np.array(self.shape) if self.nonzero_box is None else self.nonzero_box[1]
        low, high = nonzero_box(self.classes[_slices(start, stop)])
        return np.maximum(start + low - margin, 0), np.minimum(start + high + margin, self.shape)

    def crop(self, low: np.ndarray, high: np.ndarray) -> LabelVolume:
        """The voxels from `low` to `high` (exclusive; clipped to the grid), a view, with the
        affine moved so that every voxel keeps its world position."""
        low, high = np.maximum(low, 0).astype(int), np.minimum(high, self.shape).astype(int)
        affine = self.affine.copy()
        affine[:3, 3] = self.world_from_voxel(low[None].astype(float))[0]
        origin = tuple(int(o + lo) for o, lo in zip(self.origin, low, strict=True))
        return replace(
            self,
            classes=self.classes[_slices(low, high)],
            affine=affine,
            origin=origin,  # type: ignore[arg-type]
            nonzero_box=None,
        )

    def box_around(
        self, world_low: np.ndarray, world_high: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The voxel index range (first, one past last; within the grid) covering the world box
        from `world_low` to `world_high` (its eight corners, in any orientation)."""
        corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)])
        world = world_low + corners * (np.asarray(world_high) - world_low)
        ijk = self.voxel_from_world(world)
        low = np.floor(ijk.min(axis=0)).astype(int) - 1
        high = np.ceil(ijk.max(axis=0)).astype(int) + 2
        return np.maximum(low, 0), np.minimum(high, self.shape)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels along each array axis."""
        x, y, z = self.classes.shape
        return (x, y, z)

    @property
    def spacing(self) -> np.ndarray:
        """float64 (3,) voxel edge lengths in millimetres along each array axis."""
        return np.asarray(np.linalg.norm(self.affine[:3, :3], axis=0), dtype=np.float64)

    @property
    def orientation(self) -> str:
        """Axis codes such as 'RAS' or 'LAS': where each array axis points in the world."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def half_voxel_diagonal_mm(self) -> float:
        """The farthest any point lies from its nearest voxel centre, in mm."""
        a, b, c = self.affine[:3, :3].T
        return float(
            max(np.linalg.norm(s) for s in (a + b + c, a + b - c, a - b + c, -a + b + c)) / 2
        )

    def class_present(self) -> np.ndarray:
        """bool (C,): which classes have at least one voxel (from `label_counts` where the
        file's were counted, else from the classes themselves)."""
        if self.label_counts:
            present = np.zeros(self.label_table.num_classes, dtype=bool)
            for value, count in self.label_counts.items():
                class_index = self.label_table.class_of_value.get(value, 0)
                if class_index and count:
                    present[class_index - 1] = True
            return present
        counts = np.bincount(self.classes.ravel(), minlength=self.label_table.num_classes + 1)
        return np.asarray(counts[1:] > 0)

    def world_from_voxel(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (may be fractional) -> (N, 3) world mm."""
        return np.asarray(ijk @ self.affine[:3, :3].T + self.affine[:3, 3])

    def voxel_from_world(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) fractional voxel indices."""
        inverse = np.linalg.inv(self.affine)
        return np.asarray(xyz @ inverse[:3, :3].T + inverse[:3, 3])

    def class_at(self, xyz: np.ndarray) -> np.ndarray:
        """uint8 (N,) class of the voxel nearest to each world point; 0 outside the grid."""
        ijk = np.rint(self.voxel_from_world(xyz)).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        found = np.zeros(len(xyz), dtype=np.uint8)
        i, j, k = ijk[inside].T
        found[inside] = self.classes[i, j, k]
        return found


def read_nifti_header(path: str | Path, max_voxels: int = MAX_VOXELS) -> nib.Nifti1Image:
    """Open a NIfTI file and check its header (3-D, sane size and affine); reads no voxels.

    Raises:
        InputError: missing file, not NIfTI, wrong dimensionality, absurd size, bad affine.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with path.open("rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b" and not path.name.endswith(".gz"):
        raise InputError(path, "gzip-compressed file without a .gz suffix; rename it to .nii.gz")
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise InputError(path, f"not a readable NIfTI-1/2 file ({e})") from e
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"expected NIfTI-1/2, got {type(image).__name__}")
    shape = image.header.get_data_shape()
    spatial = tuple(shape[:3]) if len(shape) >= 3 and all(s == 1 for s in shape[3:]) else shape
    if len(spatial) != 3:
        raise InputError(path, f"expected a 3-D volume, got {len(shape)}-D shape {tuple(shape)}")
    if min(spatial) < 2:
        raise InputError(path, f"expected at least 2 voxels along each axis, got shape {spatial}")
    voxels = int(np.prod(spatial, dtype=np.int64))
    if voxels > max_voxels:
        raise InputError(
            path, f"absurd size: shape {spatial} has {voxels:,} voxels, limit {max_voxels:,}"
        )
    affine = image.affine
    if (
        affine is None
        or not np.all(np.isfinite(affine))
        or abs(np.linalg.det(affine[:3, :3])) < 1e-9
    ):
        raise InputError(path, f"singular or non-finite affine:\n{affine}")
    return image


def nonzero_box(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3,) first and (3,) one-past-last index of the nonzero voxels of a 3-D array; an empty
    box at the origin when there are none. Reduces the longest axes last, on the slab found."""
    low, high = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    along_z = np.flatnonzero(data.any(axis=(0, 1)))
    if along_z.size == 0:
        return low, high
    low[2], high[2] = along_z[0], along_z[-1] + 1
    slab = data[:, :, low[2] : high[2]]
    along_x = np.flatnonzero(slab.any(axis=(1, 2)))
    low[0], high[0] = along_x[0], along_x[-1] + 1
    along_y = np.flatnonzero(slab[low[0] : high[0]].any(axis=(0, 2)))
    low[1], high[1] = along_y[0], along_y[-1] + 1
    return low, high


def _slices(low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def _read_voxels(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    try:
        if path.name.endswith(".gz"):  # ISA-L inflates ~4x faster than the gzip module
            image = type(image).from_bytes(igzip.decompress(path.read_bytes()))
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, _INFLATE_ERROR, ValueError) as e:
        raise InputError(path, f"truncated or corrupt voxel data ({e})") from e
    data = data.reshape(data.shape[:3])
    if data.dtype.kind not in "iuf" or (data.dtype.kind == "f" and data.dtype.itemsize > 8):
        raise InputError(path, f"expected integer labels, got voxel type {data.dtype}")
    return data


def _as_integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """Integer dtypes unchanged; a float volume only if every voxel holds an integer."""
    if data.dtype.kind in "iu":
        return data
    out = np.empty(data.shape, dtype=np.int32)
    for start in range(0, data.shape[2], _SLAB):
        slab = data[:, :, start : start + _SLAB]
        bad = ~np.isfinite(slab) | (slab != np.round(slab)) | (np.abs(slab) > 2**31 - 1)
        if bad.any():
            example = float(slab[bad].flat[0])
            raise InputError(path, f"non-integer label value {example:g} (voxel type {data.dtype})")
        out[:, :, start : start + _SLAB] = slab
    return out


def _count_labels(data: np.ndarray) -> dict[int, int]:
    low, high = int(data.min()), int(data.max())
    if high - low < 1 << 20:
        counts = np.zeros(high - low + 1, dtype=np.int64)
        for start in range(0, data.shape[2], _SLAB):
            slab = data[:, :, start : start + _SLAB].astype(np.int64) - low
            counts += np.bincount(slab.ravel(), minlength=len(counts))
        return {int(v) + low: int(n) for v, n in enumerate(counts) if n}
    values, counts = np.unique(data, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


def load_label_volume(
    path: str | Path,
    label_table: LabelTable,
    ignore_unknown_labels: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> LabelVolume:
    """Read, validate and map a label volume to class indices.

    Args:
        path: a `.nii` or `.nii.gz` file, 3-D, integer labels (or floats holding integers).
        label_table: label value -> class index.
        ignore_unknown_labels: treat values missing from the table as background instead of
            failing.
        max_voxels: refuse volumes with more voxels than this before reading them.

    Raises:
        InputError: every invalid input (see `read_nifti_header`), non-integer labels, no
            foreground, label values the table does not know.
    """
    path = Path(path)
    image = read_nifti_header(path, max_voxels)
    data = _as_integer_labels(_read_voxels(image, path), path)
    # a scan is mostly background: count and map only the box of its nonzero voxels
    low, high = nonzero_box(data)
    inside = data[_slices(low, high)]
    counts = _count_labels(inside) if inside.size else {}
    if data.size > inside.size:
        counts[0] = counts.get(0, 0) + data.size - inside.size
    unknown = _check_labels(path, counts, label_table, ignore_unknown_labels)
    classes = np.zeros(data.shape, dtype=np.uint8)
    classes[_slices(low, high)] = _map_to_classes(inside, label_table)
    return LabelVolume(
        path=str(path),
        classes=classes,
        affine=np.asarray(image.affine, dtype=np.float64),
        label_table=label_table,
        label_counts=dict(sorted(counts.items())),
        unknown_labels=unknown,
        nonzero_box=(low, high),
    )


def _check_labels(
    path: Path, counts: dict[int, int], label_table: LabelTable, ignore_unknown_labels: bool
) -> list[int]:
    """Raise on no foreground or (unless ignored) unknown values; return the unknown values."""
    foreground = {v: n for v, n in counts.items() if v != 0}
    if not foreground:
        raise InputError(path, "no foreground: every voxel is background (label 0)")
    unknown = sorted(v for v in foreground if v not in label_table.class_of_value)
    if unknown and not ignore_unknown_labels:
        known = sorted(label_table.class_of_value)
        raise InputError(
            path,
            f"unknown label values {unknown} for label table '{label_table.name}' "
            f"(expected {known}); pass --labels or --ignore-unknown-labels",
        )
    if len(unknown) == len(foreground):
        raise InputError(
            path, f"no foreground: none of the label values {sorted(foreground)} is known"
        )
    return unknown


def scan_label_file(
    path: str | Path,
    label_table: LabelTable,
    ignore_unknown_labels: bool = False,
    max_voxels: int = MAX_VOXELS,
) -> tuple[nib.Nifti1Image, dict[int, int]]:
    """Validate a label volume as `load_label_volume` does, reading a few slices at a time so
    memory stays small whatever the volume's size (the API checks uploads with it).

    Returns:
        (the image, with no voxels loaded; voxels per label value).

    Raises:
        InputError: as `load_label_volume`.
    """
    path = Path(path)
    image = read_nifti_header(path, max_voxels)
    counts: dict[int, int] = {}
    # one open stream read front to back: slabs in file order cost one pass through a gzip
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as stream:
        streamed = type(image).from_stream(stream)
        x, y, z = streamed.shape[:3]
        thickness = max(1, _SCAN_VOXELS // (x * y))
        try:
            for start in range(0, z, thickness):
                slab = np.asanyarray(streamed.dataobj[:, :, start : start + thickness])
                if slab.dtype.kind not in "iuf" or (slab.dtype.kind == "f" and slab.itemsize > 8):
                    raise InputError(path, f"expected integer labels, got voxel type {slab.dtype}")
                for value, n in _count_labels(_as_integer_labels(slab, path)).items():
                    counts[value] = counts.get(value, 0) + n
        except (OSError, EOFError, zlib.error, ValueError) as e:
            raise InputError(path, f"truncated or corrupt voxel data ({e})") from e
    _check_labels(path, counts, label_table, ignore_unknown_labels)
    return image, counts


def _map_to_classes(data: np.ndarray, label_table: LabelTable) -> np.ndarray:
    low, high = int(data.min()), int(data.max())
    classes = np.zeros(data.shape, dtype=np.uint8)
    if high - low < 1 << 20:
        lookup = np.zeros(high - low + 1, dtype=np.uint8)
        for value, class_index in label_table.class_of_value.items():
            if low <= value <= high:
                lookup[value - low] = class_index
        for start in range(0, data.shape[2], _SLAB):
            slab = data[:, :, start : start + _SLAB].astype(np.int64) - low
            classes[:, :, start : start + _SLAB] = lookup[slab]
        return classes
    for value, class_index in label_table.class_of_value.items():
        classes[data == value] = class_index
    return classes
