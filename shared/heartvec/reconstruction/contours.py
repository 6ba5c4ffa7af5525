"""The input's three orthogonal slices through the heart's centre: its class contours in world
millimetres (`slices.json`: the web viewer draws them over the reconstructed meshes), and the
slices of both label volumes that the preview picture shows."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import find_contours

from heartvec.volume import LabelVolume


def slice_contours(volume: LabelVolume) -> dict[str, Any]:
    """Per slice (array axis 0, 1, 2 through the foreground's centroid) and per class, the
    outlines of the input's class masks as polylines of world points.

    Returns:
        {"slices": [{"axis": a, "index": i, "classes": {"<class index>": [[[x, y, z], ...],
        ...]}}]} with coordinates in mm, rounded to 0.01 mm.
    """
    centre = np.round(np.argwhere(volume.classes > 0).mean(axis=0)).astype(int)
    slices = []
    for axis in range(3):
        plane = np.take(volume.classes, centre[axis], axis=axis)
        outlines: dict[str, list[list[list[float]]]] = {}
        for class_index in np.unique(plane[plane > 0]):
            mask = np.pad(plane == class_index, 1).astype(np.float32)  # closed outlines
            lines = []
            for line in find_contours(mask, 0.5):
                ijk = np.insert(line - 1, axis, centre[axis], axis=1)  # (N, 3) voxel indices
                lines.append(np.round(volume.world_from_voxel(ijk), 2).tolist())
            outlines[str(int(class_index))] = lines
        index = int(centre[axis] + volume.origin[axis])  # in the file's grid
        slices.append({"axis": axis, "index": index, "classes": outlines})
    return {"slices": slices}


Slices = dict[str, tuple[np.ndarray, np.ndarray]]
"""Title -> (input labels, reconstructed labels) on one slice."""


def preview_slices(labels: np.ndarray, reconstructed: np.ndarray) -> Slices:
    """The three orthogonal slices of both label volumes through the input heart's centre."""
    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int)
    return {
        "axis 0": (labels[centre[0]], reconstructed[centre[0]]),
        "axis 1": (labels[:, centre[1]], reconstructed[:, centre[1]]),
        "axis 2": (labels[:, :, centre[2]], reconstructed[:, :, centre[2]]),
    }
