"""Latent refinement: how much Dice each target, number of steps and step size buys, and at
what time.

The default of `heartvec reconstruct --refine-steps` (and its target and step size) is chosen
from this measurement, within the latency target (BENCHMARKS.md). On each case (phantoms of
seeds that neither training, checkpoint selection nor bench/reconstruct.py use, and the real
heart of ../shared with `--labels mmwhs`) the volume is encoded once; every setting (target:
the latent set or the decoder's context; step size; steps) then refines that same encoding from
the same random state, decodes it (narrow band, the reconstruction's own precision) and scores
the label volume against the input: Dice per class, means over all classes and over the seven
large ones.

Usage: .venv/bin/python bench/refinement.py [--checkpoint CKPT] [--seeds 7000 7001 ...]
           [--settings latents:0.08:20 context:0.03:150 context:0.03:150:1 ...] [--resolution 128]
(a setting's optional fourth field is the weight of the sign term in the fit loss)
Writes bench/results/refinement.json, bench/results/refinement.png and a BENCHMARKS.md section
(`--append`: adds its settings to the earlier run's, for the same checkpoint and cases).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from benchmarks_md import measured, save_json, write_section
from cases import phantom_volume
from reconstruct import REAL_HEART, REPO
from tqdm import tqdm

from heartvec.labels import LARGE_CLASSES, load_label_table
from heartvec.reconstruction import defaults
from heartvec.reconstruction.decoding import autocast_dtype, decode_autocast, decode_context
from heartvec.reconstruction.encoding import (
    LoadedModel,
    checkpoint_normalization,
    encoder_inputs,
    load_model,
)
from heartvec.reconstruction.meshes import label_volume
from heartvec.reconstruction.metrics import overlaps
from heartvec.reconstruction.pipeline import ReconstructSettings
from heartvec.reconstruction.refine import TARGETS, RefineSettings, refine_latents
from heartvec.settings import default_checkpoint
from heartvec.surfaces import class_surfaces
from heartvec.volume import LabelVolume, load_label_volume

OLD_POINTS = 1536  # rows written before points per step was a setting had the default's 1536


def score(volume: LabelVolume, classes: np.ndarray) -> dict[str, Any]:
    """Dice per class present in the input; means over all of them and the large ones."""
    present = [int(c) for c in np.flatnonzero(volume.class_present()) + 1]
    overlap = overlaps(volume.classes, classes, present)
    dice = {volume.label_table.class_name(c): overlap[c]["dice"] for c in present}
    large = [v for k, v in dice.items() if k in LARGE_CLASSES]
    return {
        "dice": dice,
        "mean_dice": float(np.mean(list(dice.values()))),
        "mean_dice_large": float(np.mean(large)) if large else None,
    }


Setting = tuple[str, float, int, float, int, float]
"""(target, step size, steps, sign weight, points per step, final step size as a fraction of the
first); steps 0: no refinement."""

DEFAULT_SETTINGS = ["latents:0.08:20:0"] + [
    f"context:0.03:{steps}:{sign}" for steps in (150, 200) for sign in (0, 3, 10, 30, 100)
]


def parse_setting(text: str) -> Setting:
    """'target:step size:steps[:sign weight[:points per step[:final step size]]]' (the
    defaults' when left out; the final step size is a fraction of the first, by a cosine)."""
    fields = text.split(":")
    if not 3 <= len(fields) <= 6 or fields[0] not in TARGETS:
        raise argparse.ArgumentTypeError(
            f"{text}: expected target:step size:steps[:sign weight[:points per step[:final "
            f"step size]]], target one of {TARGETS}"
        )
    sign = float(fields[3]) if len(fields) >= 4 else defaults.REFINE_SIGN_WEIGHT
    points = int(fields[4]) if len(fields) >= 5 else defaults.REFINE_POINTS
    final = float(fields[5]) if len(fields) == 6 else defaults.REFINE_FINAL_LR
    return fields[0], float(fields[1]), int(fields[2]), sign, points, final


def label(row: dict[str, Any]) -> str:
    if not row["steps"]:
        return "none"
    sign = row.get("sign_weight", 0.0)
    points = row.get("points_per_step", OLD_POINTS)
    final = row.get("final_lr", 1.0)
    return (
        f"{row['target']} {row['lr']:g}"
        + (f" sign {sign:g}" if sign else "")
        + (f" {points} points" if points != OLD_POINTS else "")
        + (f" cosine to {final:g}" if final != 1.0 else "")
    )


def sweep_case(
    loaded: LoadedModel,
    volume: LabelVolume,
    settings: list[Setting],
    resolution: int,
) -> list[dict[str, Any]]:
    """Every setting on one volume, from one encoding."""
    model, device, state = loaded.model, loaded.device, loaded.state
    surfaces = class_surfaces(volume)
    normalization = checkpoint_normalization(state, surfaces)
    truncation = state["train_config"].get("truncation")
    dtype = autocast_dtype(ReconstructSettings().precision, device)
    points, labels = encoder_inputs(model, surfaces, normalization, np.random.default_rng(0))
    with torch.no_grad():
        encoded = model.encode(points.to(device), labels.to(device)).float()
    rows = []
    for target, lr, steps, sign, points, final in tqdm(settings, desc=Path(volume.path).name,
                                                       leave=False):  # fmt: skip
        started = time.perf_counter()
        record = None
        if steps:
            rng = np.random.default_rng(1)  # the same fit points for every setting
            setting = RefineSettings(
                steps=steps,
                learning_rate=lr,
                target=target,
                sign_weight=sign,
                points_per_step=points,
                final_lr=final,
            )
            _, context, record = refine_latents(
                model, encoded, volume, surfaces, normalization, truncation, rng, setting
            )  # fmt: skip
        else:
            with torch.no_grad():
                context = model.process(encoded)
        refine_s = time.perf_counter() - started
        with decode_autocast(dtype, device):
            grid = decode_context(model, context, surfaces, normalization, resolution, truncation)
        classes = label_volume(grid, normalization, volume, device)
        classes[~np.isin(classes, list(surfaces))] = 0
        rows.append(
            {
                "target": target,
                "lr": lr,
                "steps": steps,
                "sign_weight": sign,
                "points_per_step": points,
                "final_lr": final,
                "refine_s": round(refine_s, 2),
                "held_out_iou_after": record and record["mean_held_out_iou_after"],
                **score(volume, classes),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(7000, 7006)))
    parser.add_argument(
        "--settings",
        type=parse_setting,
        nargs="+",
        default=[parse_setting(s) for s in DEFAULT_SETTINGS],
        help="target:step size:steps, each refining the same encoding (none is always run)",
    )
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--append",
        action="store_true",
        help="add these settings to bench/results/refinement.json (same checkpoint, seeds and "
        "resolution) instead of replacing it",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    loaded = load_model(checkpoint, args.device)
    settings = [("latents", 0.0, 0, 0.0, 0, 1.0), *args.settings]
    results: dict[str, Any] = {
        **measured(args.device),
        "checkpoint": str(
            checkpoint.resolve().relative_to(REPO)
            if checkpoint.resolve().is_relative_to(REPO)
            else checkpoint
        ),
        "checkpoint_sha256": loaded.sha256,
        "resolution": args.resolution,
        "seeds": args.seeds,
        "default": {
            "target": RefineSettings().target,
            "steps": RefineSettings().steps,
            "lr": RefineSettings().learning_rate,
            "sign_weight": defaults.REFINE_SIGN_WEIGHT,
            "points_per_step": defaults.REFINE_POINTS,
            "final_lr": defaults.REFINE_FINAL_LR,
        },
        "phantoms": {},
    }
    for seed in tqdm(args.seeds, desc="phantoms"):
        volume = phantom_volume(seed)
        results["phantoms"][str(seed)] = sweep_case(loaded, volume, settings, args.resolution)
        rows = results["phantoms"][str(seed)]
        best = max(rows, key=lambda r: r["mean_dice"])
        print(f"phantom {seed}: none {rows[0]['mean_dice']:.3f}, best {best['mean_dice']:.3f} "
              f"({label(best)}, {best['steps']} steps)", flush=True)  # fmt: skip
    if REAL_HEART.is_file():
        volume = load_label_volume(REAL_HEART, load_label_table("mmwhs"))
        results["real_heart"] = sweep_case(loaded, volume, settings, args.resolution)
    out = REPO / "bench" / "results"
    if args.append:
        results = merged(json.loads((out / "refinement.json").read_text()), results)
    save_json(out / "refinement.json", results)
    plot(results, out / "refinement.png")
    update_benchmarks(results)
    return 0


def merged(earlier: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`earlier`'s rows with `new`'s settings added (a setting in both: `new`'s row). Every
    setting refines the same encoding from the same random state, so rows of two runs compare;
    only their seconds come from different runs."""
    for field in ("checkpoint_sha256", "seeds", "resolution"):
        if earlier[field] != new[field]:
            raise SystemExit(f"--append: {field} differs from bench/results/refinement.json")

    def setting_of(row: dict[str, Any]) -> Setting:
        if not row["steps"]:
            return ("none", 0.0, 0, 0.0, 0, 1.0)
        points, final = row.get("points_per_step", OLD_POINTS), row.get("final_lr", 1.0)
        return row["target"], row["lr"], row["steps"], row.get("sign_weight", 0.0), points, final

    def merge(old_rows: list[dict[str, Any]], new_rows: list[dict[str, Any]]) -> list[Any]:
        rows = {setting_of(r): r for r in old_rows} | {setting_of(r): r for r in new_rows}
        none = rows.pop(("none", 0.0, 0, 0.0, 0, 1.0))
        return [none, *sorted(rows.values(), key=setting_of)]

    result = dict(new)
    result["date"] = f"{earlier['date']} and {new['date']}"
    if earlier["checkpoint"] != new["checkpoint"]:  # one file (same sha256) by two paths
        result["checkpoint"] = f"{earlier['checkpoint']}` = `{new['checkpoint']}"
    if earlier["machine"] != new["machine"]:  # the seconds of the two runs' rows do not compare
        result["machine"] = f"{earlier['machine']} and (the rows of {new['date']}) {new['machine']}"
    result["phantoms"] = {
        seed: merge(rows, new["phantoms"][seed]) for seed, rows in earlier["phantoms"].items()
    }
    if "real_heart" in earlier and "real_heart" in new:
        result["real_heart"] = merge(earlier["real_heart"], new["real_heart"])
    return result


def phantom_means(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per setting: the phantoms' mean of each summary, and the mean refinement seconds."""
    cases = list(results["phantoms"].values())
    return [
        {
            "target": rows[0]["target"],
            "lr": rows[0]["lr"],
            "steps": rows[0]["steps"],
            "sign_weight": rows[0].get("sign_weight", 0.0),
            "points_per_step": rows[0].get("points_per_step", OLD_POINTS),
            "final_lr": rows[0].get("final_lr", 1.0),
            **{
                key: float(np.mean([r[key] for r in rows]))
                for key in ("mean_dice", "mean_dice_large", "refine_s")
            },
            "per_class": {
                name: float(np.mean([r["dice"][name] for r in rows])) for name in rows[0]["dice"]
            },
        }
        for rows in zip(*cases, strict=True)
    ]


def plot(results: dict[str, Any], path: Path) -> None:
    means = phantom_means(results)
    real = results.get("real_heart")
    panels = 3 if real else 2
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5), constrained_layout=True)
    curves = sorted({label(m) for m in means if m["steps"]})
    # more curves than the default cycle's 10 colours: tab20, and a marker per half
    style = {
        name: {"color": plt.get_cmap("tab20")(i % 20), "marker": "os^D"[(i // 10) % 4]}
        for i, name in enumerate(curves)
    }

    def curve(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
        return [rows[0]] + [r for r in rows if r["steps"] and label(r) == name]

    for axis, key, title in (
        (axes[0], "mean_dice", "phantoms: mean Dice, all classes"),
        (axes[1], "mean_dice_large", "phantoms: mean Dice, seven large"),
    ):
        for name in curves:
            rows = curve(means, name)
            axis.plot([r["steps"] for r in rows], [r[key] for r in rows], "-", label=name,
                      **style[name])  # fmt: skip
        axis.set(xlabel="refinement steps", ylabel="Dice", title=title)
        axis.legend(fontsize="small")
    if real:
        for name in curves:
            rows = curve(real, name)
            axes[2].plot([r["steps"] for r in rows], [r["mean_dice"] for r in rows], "-",
                         label=name, **style[name])  # fmt: skip
        axes[2].set(xlabel="refinement steps", ylabel="Dice", title="real heart: mean Dice")
        axes[2].legend(fontsize="small")
    figure.suptitle(f"latent refinement, {len(results['seeds'])} unseen phantoms, resolution "
                    f"{results['resolution']}")  # fmt: skip
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _step_size(row: dict[str, Any]) -> str:
    final = row.get("final_lr", 1.0)
    return f"{row['lr']:g}" + (f" -> {row['lr'] * final:g} (cosine)" if final != 1.0 else "")


def update_benchmarks(results: dict[str, Any]) -> None:
    means = phantom_means(results)
    real = results.get("real_heart") or [None] * len(means)
    default = results["default"]
    lines = [
        f"Measured {results['date']} on {results['machine']} by `bench/refinement.py`, "
        f"checkpoint `{results['checkpoint']}` ({results['checkpoint_sha256'][:12]}); phantoms "
        f"{results['seeds'][0]}-{results['seeds'][-1]} (256^3 at 1 mm; seeds no training, "
        "selection or other benchmark uses) and the real heart; each setting refines the same "
        f"encoding from the same random state; label volume from a resolution "
        f"{results['resolution']} grid. The default chosen from it: {default['steps']} steps at "
        f"{default['lr']:g} on the {default['target']}, sign term weight "
        f"{default.get('sign_weight', 0.0):g}, {default.get('points_per_step', OLD_POINTS)} fit "
        "points per step.",
        "",
        "| target | step size | sign term | points / step | steps | phantoms mean Dice | "
        "seven large | refinement s | real heart mean Dice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, heart in zip(means, real, strict=True):
        target, lr, sign, points = (
            (row["target"], _step_size(row), f"{row['sign_weight']:g}", row["points_per_step"])
            if row["steps"]
            else ("-", "-", "-", "-")
        )
        heart_dice = f"{heart['mean_dice']:.3f}" if heart else "-"
        lines.append(
            f"| {target} | {lr} | {sign} | {points} | {row['steps']} | {row['mean_dice']:.3f} | "
            f"{row['mean_dice_large']:.3f} | {row['refine_s']:.1f} | {heart_dice} |"
        )
    lines += ["", "![refinement sweep](bench/results/refinement.png)"]
    heading = "Latent refinement: target, steps and step size"
    write_section("bench/refinement.py", heading, lines)


if __name__ == "__main__":
    sys.exit(main())
