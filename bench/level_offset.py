"""Is the checkpoint's zero level biased? Dice without refinement when every class's surface is
taken at SDF = offset instead of 0 (offset > 0 grows the shapes), on phantoms the checkpoint
was trained on (to choose offsets; with --training-real, also the real subjects its training
hearts were made from) and on unseen phantoms and real subjects (to check them).

Each case is encoded once and decoded once on the dense grid (so every level is exact, not
limited to the narrow band around 0); each offset only changes which voxels count as inside.
Each class then gets the offset nearest 0 whose mean Dice on the training cases is within
--tolerance (0.001) of the best offset's, and that set is scored on every case. Decoding is in
fp32 unless --precision says otherwise. Writes bench/results/level_offset.json and .png and
its section of BENCHMARKS.md, with the `export-checkpoint` line that applies the offsets.
The offsets chosen go into a checkpoint's head bias with `heartvec export-checkpoint
--level-offset NAME=D,...` (the bundled one has them); on such a checkpoint this script
measures around its new levels.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from benchmarks_md import measured, save_json, write_section
from cases import phantom_volume
from reconstruct import REPO
from tqdm import tqdm

from heartvec.labels import LARGE_CLASSES, load_label_table
from heartvec.normalization import Normalization
from heartvec.reconstruction.decoding import autocast_dtype, decode_autocast, decode_latents
from heartvec.reconstruction.encoding import (
    LoadedModel,
    checkpoint_normalization,
    encoder_inputs,
    load_model,
)
from heartvec.reconstruction.grid import SdfGrid
from heartvec.reconstruction.meshes import label_volume
from heartvec.reconstruction.metrics import overlaps
from heartvec.settings import default_checkpoint
from heartvec.surfaces import class_surfaces
from heartvec.volume import LabelVolume, load_label_volume

OFFSETS = [
    -0.004,
    -0.002,
    -0.001,
    0.0,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.0075,
    0.01,
    0.015,
]
# Dice a class may give up for an offset nearer 0 (see per_class_choice)
TOLERANCE = 0.001
DATA = REPO.parent / "shared" / "data"
REAL = {
    "A": (DATA / "whole_heart_mmwhs_labels.nii.gz", "mmwhs"),
    "B": (DATA / "second_heart_mmwhs_raw_labels.nii.gz", "mmwhs-raw"),
}


@dataclass
class Case:
    """One volume encoded once and decoded once on the dense grid."""

    volume: LabelVolume
    grid: SdfGrid
    normalization: Normalization
    present: list[int]


def decode_case(
    loaded: LoadedModel, volume: LabelVolume, resolution: int, precision: str = "fp32"
) -> Case:
    model, device, state = loaded.model, loaded.device, loaded.state
    surfaces = class_surfaces(volume)
    normalization = checkpoint_normalization(state, surfaces)
    points, labels = encoder_inputs(model, surfaces, normalization, np.random.default_rng(0))
    with torch.no_grad():
        latents = model.encode(points.to(device), labels.to(device)).float()
    dtype = autocast_dtype(precision, device)
    with decode_autocast(dtype, device):
        grid = decode_latents(
            model, latents, surfaces, normalization, resolution,
            state["train_config"].get("truncation"), dense=True,
        )  # fmt: skip
    return Case(volume, grid, normalization, sorted(surfaces))


def score(case: Case, offset: np.ndarray, device: torch.device) -> dict[str, Any]:
    """Dice per class present, the mean and the mean over the large ones, with the surfaces
    taken at SDF = offset (one value per model class)."""
    grid = case.grid
    shifted = SdfGrid(grid.values - offset.astype(np.float32), grid.low, grid.high, grid.evaluated)
    classes = label_volume(shifted, case.normalization, case.volume, device)
    overlap = overlaps(case.volume.classes, classes, case.present)
    table = case.volume.label_table
    dice = {table.class_name(c): overlap[c]["dice"] for c in case.present}
    large = [v for k, v in dice.items() if k in LARGE_CLASSES]
    return {
        "dice": dice,
        "mean_dice": float(np.mean(list(dice.values()))),
        "mean_dice_large": float(np.mean(large)),
    }


def by_offset(case: Case, offsets: list[float], classes: int, device: torch.device) -> list[Any]:
    """One row per offset, the same offset for every class."""
    return [{"offset": o, **score(case, np.full(classes, o), device)} for o in offsets]


def per_class_choice(
    cases: dict[str, Any], offsets: list[float], names: list[str], tolerance: float
) -> list[float]:
    """Per class, the offset nearest 0 whose mean Dice over `cases` is within `tolerance` of the
    best offset's; 0 for a class none of them has.

    Not simply the best: where Dice is flat over a range of offsets (the left ventricle's is,
    from 0.002 to 0.015), the larger ones buy nothing on the training phantoms but let the class
    appear wherever its field comes close to zero, far from the shape (on the real heart, 0.01
    for the left ventricle drew a stray piece 70 mm away)."""
    chosen = []
    for name in names:
        per_case = [[r["dice"][name] for r in c["rows"]] for c in cases.values()
                    if name in c["rows"][0]["dice"]]  # fmt: skip
        if not per_case:
            chosen.append(0.0)
            continue
        mean = np.mean(per_case, axis=0)
        good = [i for i in range(len(offsets)) if mean[i] >= mean.max() - tolerance]
        chosen.append(offsets[min(good, key=lambda i: (abs(offsets[i]), offsets[i]))])
    return chosen


def global_choice(cases: dict[str, Any], offsets: list[float]) -> float:
    """The one offset for every class with the best mean Dice over `cases` (nearest 0 on a tie)."""
    mean = means(cases, "mean_dice")
    best = max(mean)
    return min((o for o, m in zip(offsets, mean, strict=True) if m >= best - 1e-9), key=abs)


def means(cases: dict[str, Any], key: str) -> list[float]:
    """Per offset, the mean of `key` over the cases."""
    per_case = [[row[key] for row in case["rows"]] for case in cases.values()]
    return [float(v) for v in np.mean(per_case, axis=0)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--training-seeds", type=int, nargs="+", default=list(range(1000, 1008)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002])
    parser.add_argument("--offsets", type=float, nargs="+", default=OFFSETS)
    parser.add_argument("--training-real", nargs="*", default=[], choices=sorted(REAL),
                        help="real subjects (in ../shared/data) the checkpoint's training hearts "
                        "were made from: they join the training phantoms in choosing; the "
                        "others are held out")  # fmt: skip
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite plot and BENCHMARKS.md from the json"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="of decoding (default fp32: the field itself, so that every "
                        "machine chooses the same offsets; bf16 moves Dice by ~0.005)")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help="per class, the offset nearest 0 within this much mean Dice of "
                        "the best one (default %(default)s)")  # fmt: skip
    args = parser.parse_args()
    out = REPO / "bench" / "results"
    if args.report_only:
        saved = json.loads((out / "level_offset.json").read_text())
        plot(saved, out / "level_offset.png")
        update_benchmarks(saved)
        return 0
    args.offsets = sorted({*args.offsets, 0.0})  # the tables compare with the checkpoint's level
    checkpoint = args.checkpoint or default_checkpoint()
    loaded = load_model(checkpoint, args.device)
    names = list(loaded.state["class_names"])
    results: dict[str, Any] = {
        **measured(args.device),
        "checkpoint_sha256": loaded.sha256,
        "level_offset": loaded.state.get("level_offset", 0.0),
        "resolution": args.resolution,
        "precision": args.precision,
        "offsets": args.offsets,
        "class_names": names,
        "training": {},
        "unseen": {},
        "real": {},
    }
    training: dict[str, Case] = {}
    for seed in tqdm(args.training_seeds, desc="training phantoms"):
        training[str(seed)] = decode_case(
            loaded, phantom_volume(seed), args.resolution, args.precision
        )
        rows = by_offset(training[str(seed)], args.offsets, len(names), loaded.device)
        results["training"][str(seed)] = {"rows": rows}
    for name in args.training_real:
        path, labels = REAL[name]
        if path.is_file():
            training[name] = decode_case(
                loaded, load_label_volume(path, load_label_table(labels)), args.resolution,
                args.precision,
            )  # fmt: skip
            rows = by_offset(training[name], args.offsets, len(names), loaded.device)
            results["real"][name] = {"rows": rows, "trained": True}
    results["tolerance"] = args.tolerance
    choosing = {**results["training"], **{f"real {k}": v for k, v in results["real"].items()}}
    chosen = per_class_choice(choosing, args.offsets, names, args.tolerance)
    results["per_class"] = dict(zip(names, chosen, strict=True))
    vector = np.array(chosen)
    for key, case in training.items():
        group = results["real"] if key in REAL else results["training"]
        group[key]["per_class"] = score(case, vector, loaded.device)
    del training
    held_out = [
        k for k, (path, _) in REAL.items() if k not in args.training_real and path.is_file()
    ]
    others = [str(seed) for seed in args.seeds] + held_out
    for name in tqdm(others, desc="unseen phantoms, held-out real subjects"):
        if name in REAL:
            path, labels = REAL[name]
            volume = load_label_volume(path, load_label_table(labels))
        else:
            volume = phantom_volume(int(name))
        case = decode_case(loaded, volume, args.resolution, args.precision)
        row: dict[str, Any] = {
            "rows": by_offset(case, args.offsets, len(names), loaded.device),
            "per_class": score(case, vector, loaded.device),
        }
        if name in REAL:
            results["real"][name] = {**row, "trained": False}
        else:
            results["unseen"][name] = row
    save_json(out / "level_offset.json", results)
    plot(results, out / "level_offset.png")
    update_benchmarks(results)
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    offsets = results["offsets"]
    groups = [("training", "training phantoms", "C0"), ("unseen", "unseen phantoms", "C1")]
    for axis, key, title in (
        (axes[0], "mean_dice", "mean Dice, all classes"),
        (axes[1], "mean_dice_large", "mean Dice, seven large"),
    ):
        for group, name, colour in groups:
            axis.plot(offsets, means(results[group], key), "o-", color=colour, label=name)
            chosen = np.mean([c["per_class"][key] for c in results[group].values()])
            axis.axhline(chosen, color=colour, linestyle=":", label=f"{name}, per-class offsets")
        for index, (name, real) in enumerate(results["real"].items()):
            label = f"real {name} ({'trained on' if real['trained'] else 'held out'})"
            colour = f"C{2 + index}"
            axis.plot(offsets, [r[key] for r in real["rows"]], "s--", color=colour, label=label)
            axis.axhline(real["per_class"][key], color=colour, linestyle=":",
                         label=f"{label}, per-class offsets")  # fmt: skip
        choosing = {**results["training"],
                    **{k: r for k, r in results["real"].items() if r["trained"]}}  # fmt: skip
        axis.axvline(global_choice(choosing, offsets), color="grey", linestyle="--",
                     label="one offset for all, chosen on the training cases")  # fmt: skip
        axis.set(xlabel="level offset (SDF units; > 0 grows)", ylabel="Dice", title=title)
        axis.legend(fontsize="small")
    figure.suptitle(f"zero level of the checkpoint, no refinement, resolution "
                    f"{results['resolution']} (dense)\ndotted: each class at its own offset, "
                    "chosen on the training cases")  # fmt: skip
    figure.savefig(path, dpi=90)
    plt.close(figure)


def update_benchmarks(results: dict[str, Any]) -> None:
    offsets = results["offsets"]
    groups = [("training phantoms " + ", ".join(results["training"]), results["training"])]
    groups.append(("unseen phantoms " + ", ".join(results["unseen"]), results["unseen"]))
    lines = [
        f"Measured {results['date']} on {results['machine']} by `bench/level_offset.py`, "
        f"checkpoint sha256 `{results['checkpoint_sha256'][:12]}` (its own level offset: "
        f"{results['level_offset']}); no refinement, each case encoded once and decoded once on "
        f"the dense {results['resolution']}^3 grid in {results.get('precision', 'auto')}, its "
        "label volume taken at SDF = offset (> 0 grows the class). Last column: each class at "
        "its own offset, the one nearest 0 whose mean Dice on the training cases (the training "
        "phantoms"
        + "".join(f", real {k}" for k, r in results["real"].items() if r["trained"])
        + ") is within "
        f"{results.get('tolerance', 0.0):g} of its best offset's.",
        "",
        "| cases | " + " | ".join(f"offset {o:g}" for o in offsets) + " | per class |",
        "|---|" + "---|" * (len(offsets) + 1),
    ]
    for name, cases in groups:
        all_classes, large = means(cases, "mean_dice"), means(cases, "mean_dice_large")
        cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(all_classes, large, strict=True)]
        chosen = [np.mean([c["per_class"][k] for c in cases.values()])
                  for k in ("mean_dice", "mean_dice_large")]  # fmt: skip
        cells.append(f"**{chosen[0]:.3f} / {chosen[1]:.3f}**")
        lines.append(f"| {name} (mean / seven large) | " + " | ".join(cells) + " |")
    for name, real in results["real"].items():
        cells = [f"{r['mean_dice']:.3f} / {r['mean_dice_large']:.3f}" for r in real["rows"]]
        own = real["per_class"]
        cells.append(f"**{own['mean_dice']:.3f} / {own['mean_dice_large']:.3f}**")
        role = "trained on" if real["trained"] else "held out"
        lines.append(f"| real {name}, {role} (mean / seven large) | " + " | ".join(cells) + " |")
    zero = offsets.index(0.0)
    choosing = {**results["training"],
                **{k: r for k, r in results["real"].items() if r["trained"]}}  # fmt: skip
    common = global_choice(choosing, offsets)
    at = offsets.index(common)
    held = [("unseen phantoms", results["unseen"])] + [
        (f"held-out real {k}", {k: r}) for k, r in results["real"].items() if not r["trained"]
    ]
    moves = "; ".join(
        f"{name} {means(cases, 'mean_dice')[zero]:.3f} -> {means(cases, 'mean_dice')[at]:.3f}"
        for name, cases in held
    )
    lines += [
        "",
        f"One offset for every class, the best on the training cases' mean Dice: **{common:g}** "
        f"(mean Dice at 0 -> at {common:g}: {moves}).",
    ]
    lines += [
        "",
        "| class | offset chosen | unseen phantoms: Dice at 0 | at its offset "
        "| held-out real: Dice at 0 | at its offset |",
        "|---|---|---|---|---|---|",
    ]
    unseen = list(results["unseen"].values())
    held_out = [r for r in results["real"].values() if not r["trained"]]
    for name, offset in results["per_class"].items():
        cells = []
        for cases in (unseen, held_out):
            cases = [c for c in cases if name in c["per_class"]["dice"]]
            if not cases:
                cells += ["", ""]
                continue
            at_zero = np.mean([c["rows"][zero]["dice"][name] for c in cases])
            at_own = np.mean([c["per_class"]["dice"][name] for c in cases])
            cells += [f"{at_zero:.3f}", f"{at_own:.3f}"]
        lines.append(f"| {name} | {offset:g} | " + " | ".join(cells) + " |")
    offsets_arg = ",".join(f"{name}={offset:g}" for name, offset in results["per_class"].items())
    lines += [
        "",
        "Into a checkpoint (this one's weights, these levels):",
        "",
        "```",
        f"heartvec export-checkpoint IN.pt OUT.pt --level-offset {offsets_arg}",
        "```",
        "",
        "![level offset](bench/results/level_offset.png)",
    ]
    write_section("bench/level_offset.py", "Zero level of the checkpoint", lines)


if __name__ == "__main__":
    sys.exit(main())
