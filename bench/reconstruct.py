"""Reconstruction quality, latency and memory; updates BENCHMARKS.md.

In one run:
- phantoms of seeds never used for training (default 5000..5004), 256^3 at 1 mm, reconstructed
  with the default settings and without refinement: Dice, IoU, Chamfer, HD95 per class, means
  over all classes and over the seven large ones;
- latency and peak memory of one 256^3 volume at resolution 256, against decoding the full
  dense grid without the narrow band (the ratio of evaluated points and of decode time);
- refinement steps vs Dice and time on one phantom;
- the real heart of ../shared (`--labels mmwhs`), with and without refinement.

Each reconstruction runs `heartvec reconstruct` in a fresh process (clean peak memory).

Usage: .venv/bin/python bench/reconstruct.py --checkpoint CKPT [--seeds 5000 5001 ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import torch
from benchmarks_md import write_section

from heartvec.model.checkpoint import load_checkpoint, model_from_checkpoint
from heartvec.phantom import make_phantom
from heartvec.reconstruction.grid import decode_grid
from heartvec.settings import default_checkpoint

REPO = Path(__file__).resolve().parents[1]
REAL_HEART = REPO.parent / "shared" / "data" / "whole_heart_mmwhs_labels.nii.gz"
HEARTVEC = str(Path(sys.executable).parent / "heartvec")


def run_reconstruct(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Report of one `heartvec reconstruct` process, with its wall time and peak memory."""
    started = time.perf_counter()
    command = [HEARTVEC, "reconstruct", str(source), "--out", str(out), *extra]
    subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads((out / "report.json").read_text())
    report["wall_s"] = time.perf_counter() - started
    return report


def dense_vs_band(checkpoint: Path, resolution: int) -> dict[str, float]:
    """Decode time of the narrow band against the full dense grid, same model and latents."""
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state).eval()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(1, config.num_inputs, 3, generator=generator) * 1.2 - 0.6
    labels = torch.randint(1, config.num_classes + 1, (1, config.num_inputs), generator=generator)
    truncation = state["train_config"].get("truncation") or 1.0
    timings = {}
    with torch.no_grad():
        context = model.process(model.encode(points, labels))

        def sdf_at(query: np.ndarray) -> np.ndarray:
            return model.decode(context, torch.from_numpy(query.astype(np.float32))[None])[
                0
            ].numpy()

        for dense in (False, True):
            started = time.perf_counter()
            grid = decode_grid(
                sdf_at,
                np.full(3, -0.7),
                np.full(3, 0.7),
                resolution,
                units_per_distance=1 / truncation,
                chunk=32_768,
                dense=dense,
            )
            key = "dense" if dense else "band"
            timings[f"{key}_s"] = time.perf_counter() - started
            timings[f"{key}_points"] = grid.evaluated
    timings["ratio"] = timings["dense_s"] / timings["band_s"]
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002, 5003, 5004])
    parser.add_argument("--refine-steps", type=int, nargs="+", default=[0, 10, 30, 100])
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "checkpoint": str(checkpoint),
    }
    ckpt = ["--checkpoint", str(checkpoint)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        phantoms = []
        for seed in args.seeds:
            labels, affine = make_phantom(seed, size=256, spacing=1.0)
            phantoms.append(folder / f"phantom_s{seed}.nii.gz")
            nib.save(nib.Nifti1Image(labels, affine), phantoms[-1])
        results["phantoms"] = [
            run_reconstruct(p, folder / f"out_{p.stem}", *ckpt) for p in phantoms
        ]
        print("phantoms done", flush=True)
        results["refinement"] = []
        for steps in args.refine_steps:
            report = run_reconstruct(
                phantoms[0], folder / f"refine_{steps}", *ckpt, "--refine-steps", str(steps)
            )
            results["refinement"].append(
                {
                    "steps": steps,
                    "summary": report["summary"],
                    "total_s": report["timings"]["total_s"],
                }
            )
        print("refinement done", flush=True)
        if REAL_HEART.is_file():
            results["real_heart"] = {
                str(steps): run_reconstruct(
                    REAL_HEART,
                    folder / f"real_{steps}",
                    *ckpt,
                    "--labels",
                    "mmwhs",
                    "--refine-steps",
                    str(steps),
                )
                for steps in (0, args.refine_steps[-1])
            }
        print("real heart done", flush=True)
    results["dense_vs_band"] = dense_vs_band(checkpoint, 256)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "reconstruct.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, out / "reconstruct.png")
    update_benchmarks(results)
    return 0


def _per_class_mean(reports: list[dict[str, Any]], key: str) -> dict[str, float]:
    names = reports[0]["classes"].keys()
    return {
        n: float(
            np.mean([r["classes"][n][key] for r in reports if r["classes"][n][key] is not None])
        )
        for n in names
    }


def plot(results: dict[str, Any], path: Path) -> None:
    figure, (dice, refine) = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
    per_class = _per_class_mean(results["phantoms"], "dice")
    dice.bar(range(len(per_class)), list(per_class.values()), color=[f"C{i}" for i in range(10)])
    dice.set_xticks(range(len(per_class)), list(per_class), rotation=45, ha="right")
    dice.set(ylim=(0, 1), ylabel="Dice", title="unseen phantoms, no refinement")
    steps = [r["steps"] for r in results["refinement"]]
    refine.plot(steps, [r["summary"]["mean_dice"] for r in results["refinement"]], marker="o")
    refine.set(xlabel="refinement steps", ylabel="mean Dice", title="refinement on one phantom")
    figure.savefig(path, dpi=90)
    plt.close(figure)


def update_benchmarks(results: dict[str, Any]) -> None:
    reports = results["phantoms"]
    summary = {
        key: float(np.mean([r["summary"][key] for r in reports]))
        for key in ("mean_dice", "mean_dice_large", "mean_hd95_mm")
    }
    per_class = _per_class_mean(reports, "dice")
    latency = max(r["timings"]["total_s"] for r in reports)
    memory = max(r["peak_memory_mb"] for r in reports)
    band = results["dense_vs_band"]
    lines = [
        f"Measured {results['date']} on {results['machine']} by "
        f"`bench/reconstruct.py`, checkpoint `{results['checkpoint']}`.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| unseen phantoms ({len(reports)}), mean Dice all classes | "
        f"{summary['mean_dice']:.3f} | >= 0.85 (with default settings) |",
        f"| mean Dice, seven large structures | {summary['mean_dice_large']:.3f} | >= 0.92 |",
        f"| mean HD95 | {summary['mean_hd95_mm']:.2f} mm | <= 3 mm |",
        f"| latency 256^3 at resolution 256 (worst) | {latency:.1f} s | <= 60 s on CPU |",
        f"| peak memory | {memory:,.0f} MB | < 6 GB |",
        f"| decode, narrow band vs dense grid | {band['band_s']:.1f} s vs {band['dense_s']:.1f}"
        f" s ({band['ratio']:.1f}x; {band['band_points']:,} vs {band['dense_points']:,} "
        "points) | |",
    ]
    lines.append(
        "| per-class Dice | " + ", ".join(f"{k} {v:.2f}" for k, v in per_class.items()) + " | |"
    )
    for row in results["refinement"]:
        lines.append(
            f"| refinement {row['steps']} steps (one phantom) | mean Dice "
            f"{row['summary']['mean_dice']:.3f}, {row['total_s']:.1f} s | |"
        )
    for steps, report in results.get("real_heart", {}).items():
        s = report["summary"]
        lines.append(
            f"| real heart, refinement {steps} | mean Dice {s['mean_dice']:.3f}, large "
            f"{s['mean_dice_large']:.3f}, HD95 {s['mean_hd95_mm']:.2f} mm | |"
        )
    lines += ["", "![reconstruction benchmark](bench/results/reconstruct.png)"]
    write_section("bench/reconstruct.py", "Reconstruction (`heartvec reconstruct`)", lines)


if __name__ == "__main__":
    sys.exit(main())
