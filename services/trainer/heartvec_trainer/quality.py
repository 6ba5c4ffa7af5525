"""Quality figures of a prepared sample, and the dataset's `quality.json` / `quality.png`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from heartvec.samples import Sample
from heartvec.volume import LabelVolume


def sample_quality(volume: LabelVolume, sample: Sample) -> dict[str, Any]:
    """Per-class figures a person checks before training on a sample.

    `sign_agreement` re-derives inside/outside from the label volume (nearest voxel) for query
    points farther than one voxel diagonal from the class surface, from the stored normalized
    points and `center`/`scale`: it checks the saved file, not the code that wrote it.
    """
    arrays = sample.arrays
    table = volume.label_table
    scale = float(arrays["scale"])
    center = arrays["center"].astype(np.float64)
    points = np.concatenate([arrays["vol_points"], arrays["near_points"]]).astype(np.float64)
    sdf = np.concatenate([arrays["vol_sdf"], arrays["near_sdf"]])
    labels_at_points = volume.class_at(center + scale * points)
    one_voxel = 2 * volume.half_voxel_diagonal_mm / scale
    per_class: dict[str, Any] = {}
    agree_total = checked_total = 0
    for class_index, surface in sample.surfaces.items():
        column = sdf[:, class_index - 1]
        far = np.abs(column) > one_voxel
        agree = int(((column[far] < 0) == (labels_at_points[far] == class_index)).sum())
        agree_total += agree
        checked_total += int(far.sum())
        areas, _ = surface.face_areas_and_normals()
        vol_column = arrays["vol_sdf"][:, class_index - 1]
        near_column = arrays["near_sdf"][:, class_index - 1]
        per_class[table.class_name(class_index)] = {
            "faces": len(surface.faces),
            "surface_area_mm2": round(float(areas.sum()), 2),
            "volume_ml": round(surface.enclosed_volume() / 1000, 3),
            "surface_samples": int((arrays["surface_labels"] == class_index).sum()),
            "inside_fraction_vol": round(float((vol_column < 0).mean()), 5),
            "inside_fraction_near": round(float((near_column < 0).mean()), 5),
            "sdf_min": round(float(column.min()), 5),
            "sdf_max": round(float(column.max()), 5),
            "sign_agreement_far": round(agree / max(int(far.sum()), 1), 6),
        }
    outside_cube = float((np.abs(arrays["surface_points"]) > 1).any(axis=1).mean())
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "classes_present": [table.class_name(c) for c in sample.surfaces],
        "center_mm": [round(float(c), 3) for c in center],
        "scale_mm": scale,
        "surface_points_outside_unit_cube": round(outside_cube, 6),
        "sign_agreement_far": round(agree_total / max(checked_total, 1), 6),
        "per_class": per_class,
    }


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def plot_sample(volume: LabelVolume, sample: Sample, out_png: Path) -> None:
    """SDF histograms per class and an axial slice with near points coloured by their sign.

    Args:
        volume: the source volume.
        sample: its prepared sample.
        out_png: where to write the PNG.
    """
    arrays = sample.arrays
    table = volume.label_table
    classes = list(sample.surfaces)
    figure = plt.figure(figsize=(15, 7), constrained_layout=True)
    grid = figure.add_gridspec(2, 4)
    histogram = figure.add_subplot(grid[0, :2])
    bins = np.linspace(-0.3, 1.5, 90).tolist()
    for class_index in classes:  # colour of class i = tab10 colour i - 1, as on the slice
        histogram.hist(
            arrays["vol_sdf"][:, class_index - 1],
            bins=bins,
            histtype="step",
            color=plt.get_cmap("tab10")(class_index - 1),
            label=table.class_name(class_index),
        )
    histogram.set(title="volume-point SDF per class", xlabel="SDF (normalized)", ylabel="points")
    histogram.legend(fontsize=7, ncol=2)
    near = figure.add_subplot(grid[1, :2])
    near_bins = np.linspace(-0.12, 0.12, 97).tolist()
    for class_index in classes:
        column = arrays["near_sdf"][:, class_index - 1]
        near.hist(
            column[np.abs(column) < 0.12],
            bins=near_bins,
            histtype="step",
            color=plt.get_cmap("tab10")(class_index - 1),
        )
    near.set(title="near-point SDF per class (|sdf| < 0.12)", xlabel="SDF (normalized)")
    _plot_slice(figure.add_subplot(grid[:, 2:]), volume, sample)
    figure.suptitle(Path(volume.path).name)
    figure.savefig(out_png, dpi=80)
    plt.close(figure)


def _plot_slice(axes: Any, volume: LabelVolume, sample: Sample) -> None:
    """The label slice through the heart's centre, near points within 1 mm of it on top."""
    arrays = sample.arrays
    normalization = sample.normalization
    center_voxel = np.rint(volume.voxel_from_world(normalization.center[None]))[0].astype(int)
    k = int(np.clip(center_voxel[2], 0, volume.shape[2] - 1))
    colours = ListedColormap(["white", *(f"C{i}" for i in range(10))])  # class i = colour C(i-1)
    axes.imshow(volume.classes[:, :, k].T, origin="lower", cmap=colours, vmin=0, vmax=10)
    world = normalization.to_world(arrays["near_points"].astype(np.float64))
    voxel = volume.voxel_from_world(world)
    on_slice = np.abs(voxel[:, 2] - k) < 0.5
    inside_any = (arrays["near_sdf"][on_slice] < 0).any(axis=1)
    axes.scatter(*voxel[on_slice][inside_any, :2].T, s=2, c="black", label="SDF < 0 for a class")
    axes.scatter(*voxel[on_slice][~inside_any, :2].T, s=2, c="red", label="SDF > 0 for all")
    axes.set(title=f"slice k={k}: labels, near points by SDF sign", xlabel="i", ylabel="j")
    axes.legend(loc="upper right", fontsize=7)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset-level totals over per-file records."""
    done = [r for r in records if r["status"] == "ok"]
    agreement = [r["quality"]["sign_agreement_far"] for r in done]
    seconds = [r["timings"]["total_s"] for r in done if "timings" in r]
    return {
        "files": len(records),
        "prepared": len(done),
        "failed": len(records) - len(done),
        "min_sign_agreement_far": min(agreement) if agreement else None,
        "mean_seconds_per_file": round(float(np.mean(seconds)), 3) if seconds else None,
    }
