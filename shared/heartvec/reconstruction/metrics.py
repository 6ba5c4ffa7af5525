"""Agreement of a reconstruction with its input: overlap per class and surface distances."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.spatial import cKDTree

from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface


def overlaps(
    reference: np.ndarray, reconstructed: np.ndarray, class_indices: Iterable[int]
) -> dict[int, dict[str, float]]:
    """Dice and IoU per class between two class-index volumes (uint8) of the same grid.

    One pass: a joint histogram of (reference, reconstructed) value pairs gives every class's
    intersection and sizes, several times faster than a mask per class.
    """
    first, second = (
        torch.from_numpy(x.astype(np.uint8, copy=False)) for x in (reference, reconstructed)
    )
    pairs = (first.to(torch.int32) << 8) | second
    joint = torch.bincount(pairs.ravel(), minlength=256 * 256).reshape(256, 256).numpy()
    result = {}
    for c in class_indices:
        both = int(joint[c, c])
        a, b = int(joint[c].sum()), int(joint[:, c].sum())
        either = a + b - both
        result[c] = {
            "dice": 2 * both / (a + b) if a + b else 1.0,
            "iou": both / either if either else 1.0,
        }
    return result


def surface_distances(
    reference: Surface,
    reconstructed: Surface,
    samples: int = 20_000,
    seed: int = 0,
    workers: int = -1,
) -> dict[str, float]:
    """Symmetric Chamfer distance (mean of both mean nearest distances) and 95% Hausdorff
    distance (larger of both 95th percentiles) in mm, from area-uniform samples; `workers`:
    threads of the nearest-neighbour queries (-1: all cores)."""
    rng = np.random.default_rng(seed)
    a, _, _ = sample_surfaces({1: reference}, samples, rng)
    b, _, _ = sample_surfaces({1: reconstructed}, samples, rng)
    a_to_b, _ = cKDTree(b).query(a, workers=workers)
    b_to_a, _ = cKDTree(a).query(b, workers=workers)
    return {
        "chamfer_mm": float((a_to_b.mean() + b_to_a.mean()) / 2),
        "hd95_mm": float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))),
    }
