"""What `report.json` says of a reconstruction: per-class overlap and surface distances against
the input, their means, and records of the grid and the model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from heartvec.labels import LARGE_CLASSES, LabelTable
from heartvec.model.checkpoint import level_offsets_of
from heartvec.normalization import Normalization
from heartvec.reconstruction.encoding import LoadedModel
from heartvec.reconstruction.grid import SdfGrid
from heartvec.reconstruction.metrics import overlaps, surface_distances
from heartvec.reconstruction.supports import ClassSupports
from heartvec.resources import available_cpus
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

ClassMetrics = dict[str, dict[str, float | None]]
"""Class name -> {"dice", "iou", "chamfer_mm", "hd95_mm"} (distances None without a mesh)."""


def class_metrics(
    volume: LabelVolume,
    classes: np.ndarray,
    surfaces: dict[int, Surface],
    meshes: dict[int, Surface],
) -> ClassMetrics:
    """Dice and IoU per class of the input, and surface distances for the classes with a mesh:
    a class per thread, one core each (the nearest-neighbour queries and most of the sampling
    run without the GIL)."""
    overlap = overlaps(volume.classes, classes, surfaces)
    with_mesh = [c for c in surfaces if c in meshes]
    with ThreadPoolExecutor(max(1, min(len(with_mesh), available_cpus()))) as pool:
        distances = dict(
            zip(
                with_mesh,
                pool.map(lambda c: surface_distances(surfaces[c], meshes[c], workers=1), with_mesh),
                strict=True,
            )
        )
    metrics: ClassMetrics = {}
    for class_index in surfaces:
        row: dict[str, float | None] = dict(overlap[class_index])
        row.update(distances.get(class_index, {"chamfer_mm": None, "hd95_mm": None}))
        metrics[volume.label_table.class_name(class_index)] = row
    return metrics


def summary(classes: ClassMetrics) -> dict[str, float | None]:
    """Means over every class and over the seven large ones, and the worst HD95."""

    def mean(names: list[str], key: str) -> float | None:
        values = [classes[n][key] for n in names if classes[n][key] is not None]
        return float(np.mean(values)) if values else None  # type: ignore[arg-type]

    every = list(classes)
    large = [n for n in every if n in LARGE_CLASSES]
    return {
        "mean_dice": mean(every, "dice"),
        "mean_dice_large": mean(large, "dice"),
        "mean_iou": mean(every, "iou"),
        "mean_chamfer_mm": mean(every, "chamfer_mm"),
        "mean_hd95_mm": mean(every, "hd95_mm"),
        "max_hd95_mm": max(
            (v["hd95_mm"] for v in classes.values() if v["hd95_mm"] is not None), default=None
        ),
    }


def grid_record(
    grid: SdfGrid,
    resolution: int,
    min_piece: float,
    pieces_dropped: dict[int, int],
    label_table: LabelTable,
) -> dict[str, Any]:
    """The decoded grid: its size and box, how it was decoded, the stray pieces dropped."""
    return {
        "resolution": resolution,
        "evaluated_points": grid.evaluated,
        "decoding": "dense" if grid.evaluated == resolution**3 else "band",
        "min_piece": min_piece,
        "pieces_dropped": {label_table.class_name(c): n for c, n in sorted(pieces_dropped.items())},
        "low": grid.low.tolist(),
        "high": grid.high.tolist(),
    }


def support_record(
    supports: ClassSupports,
    outside: dict[int, int],
    grid: SdfGrid,
    normalization: Normalization,
    label_table: LabelTable,
) -> dict[str, Any]:
    """How far from the input each class may reach, and what was set outside that: grid
    points and their volume in mm^3, per class."""
    point_mm3 = float(np.prod(grid.spacing)) * normalization.scale**3
    return {
        "support_margin_mm": supports.margin_mm,
        "outside_support": {
            label_table.class_name(c): {"points": n, "mm3": round(n * point_mm3, 1)}
            for c, n in sorted(outside.items())
        },
    }


def normalization_record(normalization: Normalization) -> dict[str, Any]:
    """`world_mm = center_mm + scale_mm * p`."""
    return {"center_mm": normalization.center.tolist(), "scale_mm": normalization.scale}


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """Which checkpoint reconstructed: its preset, epoch, file, hash and zero-level offsets."""
    return {
        "preset": loaded.state.get("preset"),
        "epoch": loaded.state.get("epoch"),
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_sha256": loaded.sha256,
        "level_offset": level_offsets_of(loaded.state),
    }
