"""Agreement of a reconstruction with its input: overlap per class and surface distances."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface


def overlap(reference: np.ndarray, reconstructed: np.ndarray, class_index: int) -> dict[str, float]:
    """Dice and IoU of one class between two class-index volumes of the same grid."""
    a, b = reference == class_index, reconstructed == class_index
    both, either = int((a & b).sum()), int((a | b).sum())
    total = int(a.sum() + b.sum())
    return {"dice": 2 * both / total if total else 1.0, "iou": both / either if either else 1.0}


def surface_distances(
    reference: Surface, reconstructed: Surface, samples: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """Symmetric Chamfer distance (mean of both mean nearest distances) and 95% Hausdorff
    distance (larger of both 95th percentiles) in mm, from area-uniform samples."""
    rng = np.random.default_rng(seed)
    a, _, _ = sample_surfaces({1: reference}, samples, rng)
    b, _, _ = sample_surfaces({1: reconstructed}, samples, rng)
    a_to_b, _ = cKDTree(b).query(a, workers=-1)
    b_to_a, _ = cKDTree(a).query(b, workers=-1)
    return {
        "chamfer_mm": float((a_to_b.mean() + b_to_a.mean()) / 2),
        "hd95_mm": float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))),
    }
