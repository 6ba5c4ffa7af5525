"""Is the checkpoint's zero level biased? Dice without refinement when every class's surface is
taken at SDF = offset instead of 0 (offset > 0 grows the shapes), on phantoms the checkpoint
was trained on (to choose an offset) and on unseen ones and the real heart (to check it).

Each case is encoded once and decoded once on the dense grid (so every level is exact, not
limited to the narrow band around 0); each offset only changes which voxels count as inside.
Writes bench/results/level_offset.json and .png and its section of BENCHMARKS.md. The offset
chosen goes into a checkpoint's head bias with `heartvec export-checkpoint --level-offset D`
(the bundled one has 0.005); on such a checkpoint this script measures around its new level.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch
from benchmarks_md import write_section
from reconstruct import REAL_HEART, REPO, cpu_description
from tqdm import tqdm

from heartvec.labels import LARGE_CLASSES, load_label_table
from heartvec.phantom import make_phantom
from heartvec.reconstruction.grid import SdfGrid
from heartvec.reconstruction.meshes import label_volume
from heartvec.reconstruction.metrics import overlaps
from heartvec.reconstruction.pipeline import (
    LoadedModel,
    autocast_dtype,
    checkpoint_normalization,
    decode_autocast,
    decode_latents,
    encoder_inputs,
    load_model,
)
from heartvec.settings import default_checkpoint
from heartvec.surfaces import class_surfaces
from heartvec.volume import LabelVolume, load_label_volume

OFFSETS = [0.0, 0.005, 0.01, 0.015, 0.02, 0.03]


def dice_by_offset(
    loaded: LoadedModel, volume: LabelVolume, offsets: list[float], resolution: int
) -> dict[str, Any]:
    """Per offset: Dice per class present, the mean and the mean over the large ones."""
    model, device, state = loaded.model, loaded.device, loaded.state
    surfaces = class_surfaces(volume)
    normalization = checkpoint_normalization(state, surfaces)
    points, labels = encoder_inputs(model, surfaces, normalization, np.random.default_rng(0))
    with torch.no_grad():
        latents = model.encode(points.to(device), labels.to(device)).float()
    dtype = autocast_dtype("auto", device)
    with decode_autocast(dtype, device):
        grid = decode_latents(
            model, latents, surfaces, normalization, resolution,
            state["train_config"].get("truncation"), dense=True,
        )  # fmt: skip
    present = sorted(surfaces)
    rows = []
    for offset in offsets:
        shifted = SdfGrid(grid.values - offset, grid.low, grid.high, grid.evaluated)
        classes = label_volume(shifted, normalization, volume, device)
        overlap = overlaps(volume.classes, classes, present)
        dice = {volume.label_table.class_name(c): overlap[c]["dice"] for c in present}
        large = [v for k, v in dice.items() if k in LARGE_CLASSES]
        rows.append(
            {
                "offset": offset,
                "dice": dice,
                "mean_dice": float(np.mean(list(dice.values()))),
                "mean_dice_large": float(np.mean(large)),
            }
        )
    return {"rows": rows, "precision": "bf16" if dtype is not None else "fp32"}


def phantom_volume(seed: int) -> LabelVolume:
    labels, affine = make_phantom(seed, size=256, spacing=1.0)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"phantom_s{seed}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), path)
        return load_label_volume(path, load_label_table("default"))


def means(cases: dict[str, Any], key: str) -> list[float]:
    """Per offset, the mean of `key` over the cases."""
    per_case = [[row[key] for row in case["rows"]] for case in cases.values()]
    return [float(v) for v in np.mean(per_case, axis=0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[1000, 1001, 1002, 1003])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002])
    parser.add_argument("--offsets", type=float, nargs="+", default=OFFSETS)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    loaded = load_model(checkpoint, args.device)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_description() if args.device == "cpu" else torch.cuda.get_device_name(),
        "checkpoint_sha256": loaded.sha256,
        "resolution": args.resolution,
        "offsets": args.offsets,
        "training": {},
        "unseen": {},
    }
    for group, seeds in (("training", args.training_seeds), ("unseen", args.seeds)):
        for seed in tqdm(seeds, desc=f"{group} phantoms"):
            volume = phantom_volume(seed)
            results[group][str(seed)] = dice_by_offset(
                loaded, volume, args.offsets, args.resolution
            )
    if REAL_HEART.is_file():
        volume = load_label_volume(REAL_HEART, load_label_table("mmwhs"))
        results["real_heart"] = dice_by_offset(loaded, volume, args.offsets, args.resolution)
    out = REPO / "bench" / "results"
    (out / "level_offset.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "level_offset.png")
    update_benchmarks(results)
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    offsets = results["offsets"]
    for axis, key, title in (
        (axes[0], "mean_dice", "mean Dice, all classes"),
        (axes[1], "mean_dice_large", "mean Dice, seven large"),
    ):
        for group, name in (("training", "training phantoms"), ("unseen", "unseen phantoms")):
            axis.plot(offsets, means(results[group], key), "o-", label=name)
        if "real_heart" in results:
            rows = results["real_heart"]["rows"]
            axis.plot(offsets, [r[key] for r in rows], "s--", label="real heart")
        axis.set(xlabel="level offset (SDF units; > 0 grows)", ylabel="Dice", title=title)
        axis.legend()
    figure.suptitle(f"zero level of the checkpoint, no refinement, resolution "
                    f"{results['resolution']} (dense)")  # fmt: skip
    figure.savefig(path, dpi=90)
    plt.close(figure)


def update_benchmarks(results: dict[str, Any]) -> None:
    offsets = results["offsets"]
    groups = [("training phantoms " + ", ".join(results["training"]), results["training"])]
    groups.append(("unseen phantoms " + ", ".join(results["unseen"]), results["unseen"]))
    lines = [
        f"Measured {results['date']} on {results['machine']} by `bench/level_offset.py`, "
        f"checkpoint sha256 `{results['checkpoint_sha256'][:12]}`; no refinement, each case "
        f"encoded once and decoded once on the dense {results['resolution']}^3 grid, its label "
        "volume taken at SDF = offset (> 0 grows every class).",
        "",
        "| cases | " + " | ".join(f"offset {o:g}" for o in offsets) + " |",
        "|---|" + "---|" * len(offsets),
    ]
    for name, cases in groups:
        all_classes, large = means(cases, "mean_dice"), means(cases, "mean_dice_large")
        cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(all_classes, large, strict=True)]
        lines.append(f"| {name} (mean / seven large) | " + " | ".join(cells) + " |")
    if "real_heart" in results:
        cells = [f"{r['mean_dice']:.3f}" for r in results["real_heart"]["rows"]]
        lines.append("| real heart (mean) | " + " | ".join(cells) + " |")
    lines += ["", "![level offset](bench/results/level_offset.png)"]
    write_section("bench/level_offset.py", "Zero level of the checkpoint", lines)


if __name__ == "__main__":
    sys.exit(main())
