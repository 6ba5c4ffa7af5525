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
       .venv/bin/python bench/reconstruct.py --device cuda --latency-only   (GPU latency:
       bench/results/reconstruct_latency_cuda.json and its own BENCHMARKS.md section; on a
       CPU `--device cpu`, and `--no-dense` skips the dense-grid decode, minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from benchmarks_md import machine, measured, save_json, utc_now, write_section

from heartvec.labels import load_label_table
from heartvec.model.checkpoint import load_checkpoint, model_from_checkpoint
from heartvec.phantom import make_phantom
from heartvec.reconstruction import decoding, encoding
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import default_checkpoint
from heartvec.surfaces import class_surfaces
from heartvec.volume import load_label_volume

REPO = Path(__file__).resolve().parents[1]
REAL_HEART = REPO.parent / "shared" / "data" / "whole_heart_mmwhs_labels.nii.gz"
HEARTVEC = str(Path(sys.executable).parent / "heartvec")
if not Path(HEARTVEC).is_file():  # an interpreter without the entry point beside it
    HEARTVEC = shutil.which("heartvec") or HEARTVEC


def run_reconstruct(source: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Report of one `heartvec reconstruct` process, with its wall time and peak memory."""
    started = time.perf_counter()
    command = [HEARTVEC, "reconstruct", str(source), "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    report = json.loads((out / "report.json").read_text())
    report["wall_s"] = time.perf_counter() - started
    return report


def dense_vs_band(
    checkpoint: Path, volume_path: Path, resolution: int, device: str = "cpu"
) -> dict[str, float]:
    """Decode time of the band against the full dense grid: same model, same latents (of a
    real input), same grid as `heartvec reconstruct` uses."""
    volume = load_label_volume(volume_path, load_label_table("default"))
    surfaces = class_surfaces(volume)
    state = load_checkpoint(checkpoint, map_location=device)
    model = model_from_checkpoint(state).to(device).eval()
    normalization = encoding.checkpoint_normalization(state, surfaces)
    points, labels = encoding.encoder_inputs(
        model, surfaces, normalization, np.random.default_rng(0)
    )
    truncation = state["train_config"].get("truncation")
    with torch.no_grad():
        latents = model.encode(points.to(device), labels.to(device))
    dtype = decoding.autocast_dtype("auto", torch.device(device))  # as `heartvec reconstruct`
    timings: dict[str, float] = {"bf16": float(dtype is not None)}
    for dense in (False, True):
        _synchronize(device)
        started = time.perf_counter()
        with decoding.decode_autocast(dtype, torch.device(device)):
            grid = decoding.decode_latents(
                model, latents, surfaces, normalization, resolution, truncation, dense=dense
            )
        _synchronize(device)
        key = "dense" if dense else "band"
        timings[f"{key}_s"] = time.perf_counter() - started
        timings[f"{key}_points"] = grid.evaluated
        print(f"{key}: {timings[f'{key}_s']:.1f} s, {grid.evaluated:,} points", flush=True)
    timings["ratio"] = timings["dense_s"] / timings["band_s"]
    return timings


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _shown(checkpoint: Path) -> str:
    """The checkpoint's path as BENCHMARKS.md shows it: relative to the repository if inside."""
    resolved = checkpoint.resolve()
    return str(resolved.relative_to(REPO) if resolved.is_relative_to(REPO) else checkpoint)


def latency_only(checkpoint: Path, device: str, repeats: int, dense: bool = True) -> int:
    """Latency of one 256^3 phantom at resolution 256 with default settings on `device`, as
    separate `heartvec reconstruct` processes (the first pays CUDA start-up), and the band vs
    dense decode on the same device (unless not `dense`: 7 minutes on a 2-core AVX2 CPU; the
    full run measures it too)."""
    results: dict[str, Any] = {
        "date": utc_now(),
        "device": device,
        "device_name": machine(device),
        "checkpoint": _shown(checkpoint),
        "default_refine_steps": RefineSettings().steps,
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        labels, affine = make_phantom(5000, size=256, spacing=1.0)
        source = folder / "phantom_s5000.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), source)
        runs = []
        for index in range(repeats):
            report = run_reconstruct(
                source, folder / f"out_{index}", "--checkpoint", str(checkpoint),
                "--device", device,
            )  # fmt: skip
            runs.append(
                {
                    "wall_s": report["wall_s"],
                    "timings": report["timings"],
                    "peak_memory_mb": report.get("peak_memory_mb"),
                    "summary": report["summary"],
                }
            )
            print(f"run {index}: pipeline {report['timings']['total_s']:.2f} s, process "
                  f"{report['wall_s']:.1f} s, timings {report['timings']}", flush=True)  # fmt: skip
        results["runs"] = runs
        if dense:
            results["dense_vs_band"] = dense_vs_band(checkpoint, source, 256, device)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = device.split(":")[0]
    save_json(out / f"reconstruct_latency_{name}.json", results)
    print(json.dumps(results, indent=2))
    update_latency_section(results)
    return 0


def update_latency_section(results: dict[str, Any]) -> None:
    """BENCHMARKS.md's section of a `--latency-only` run (one per device kind)."""
    name = results["device"].split(":")[0]
    target = "<= 5 s on a GPU" if name == "cuda" else "<= 60 s on CPU"
    runs, band = results["runs"], results.get("dense_vs_band")
    columns = " | ".join(f"run {i + 1}" for i in range(len(runs)))
    lines = [
        f"Measured {results['date']} by `bench/reconstruct.py --device {results['device']} "
        f"--latency-only` on {results['device_name']}, checkpoint `{results['checkpoint']}`; "
        f"phantom 5000, 256^3 at 1 mm, resolution 256, {results['default_refine_steps']} "
        "refinement steps; each run a separate `heartvec reconstruct` process. Raw: "
        f"`bench/results/reconstruct_latency_{name}.json`.",
        "",
        f"| what | {columns} | target |",
        "|---|" + "---|" * len(runs) + "---|",
        "| pipeline total | "
        + " | ".join(f"{r['timings']['total_s']:.1f} s" for r in runs)
        + f" | {target} |",
        "| whole process | " + " | ".join(f"{r['wall_s']:.1f} s" for r in runs) + " | |",
        "| stages | "
        + " | ".join(
            ", ".join(f"{k[:-2]} {v:.1f}" for k, v in r["timings"].items() if k != "total_s") + " s"
            for r in runs
        )
        + " | |",
        "| peak host memory | "
        + " | ".join(f"{r['peak_memory_mb']:,} MB" for r in runs)
        + " | < 6 GB |",
    ]
    if band:
        lines.append(
            f"| decode, band vs dense grid (same latents) | band {band['band_s']:.1f} s "
            f"({band['band_points']:,} points) vs dense {band['dense_s']:.1f} s "
            f"({band['dense_points']:,} points) |" + " |" * len(runs)
        )
    write_section(f"bench/reconstruct.py:latency_{name}", f"Reconstruction latency ({name})", lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[5000, 5001, 5002])
    parser.add_argument("--refine-steps", type=int, nargs="+", default=[0, 50, 100, 200, 300])
    parser.add_argument(
        "--resolution", type=int, default=256, help="grid of the quality runs (default 256)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the latency of one 256^3 phantom (3 processes) and band vs dense decode",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--latency-only processes")
    parser.add_argument(
        "--no-dense", action="store_true", help="--latency-only without the dense-grid decode"
    )
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    if args.latency_only:
        return latency_only(checkpoint, args.device, args.repeats, not args.no_dense)
    results: dict[str, Any] = {
        **measured(),
        "checkpoint": _shown(checkpoint),
        "seeds": args.seeds,
    }
    ckpt = ["--checkpoint", str(checkpoint)]
    default_steps = RefineSettings().steps
    grid = ["--resolution", str(args.resolution)]
    results["resolution"] = args.resolution
    results["default_refine_steps"] = default_steps
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        phantoms = []
        for seed in args.seeds:
            labels, affine = make_phantom(seed, size=256, spacing=1.0)
            phantoms.append(folder / f"phantom_s{seed}.nii.gz")
            nib.save(nib.Nifti1Image(labels, affine), phantoms[-1])
        runs: dict[tuple[int, int], dict[str, Any]] = {}  # (phantom, steps) -> report

        def phantom_run(index: int, steps: int) -> dict[str, Any]:
            if (index, steps) not in runs:
                out = folder / f"out_{index}_{steps}"
                runs[index, steps] = run_reconstruct(
                    phantoms[index], out, *ckpt, "--refine-steps", str(steps), *grid
                )
                summary = runs[index, steps]["summary"]
                print(f"phantom {args.seeds[index]}, refine {steps}: mean Dice "
                      f"{summary['mean_dice']:.3f}", flush=True)  # fmt: skip
            return runs[index, steps]

        results["phantoms"] = [phantom_run(i, default_steps) for i in range(len(phantoms))]
        results["phantoms_no_refinement"] = [phantom_run(i, 0) for i in range(len(phantoms))]
        results["refinement"] = [
            {
                "steps": steps,
                "summary": phantom_run(0, steps)["summary"],
                "total_s": phantom_run(0, steps)["timings"]["total_s"],
            }
            for steps in sorted(set(args.refine_steps) | {0, default_steps})
        ]
        if REAL_HEART.is_file():
            real_steps = sorted({0, default_steps or max(args.refine_steps)})
            real = ["--labels", "mmwhs", *grid]
            results["real_heart"] = {
                str(steps): run_reconstruct(
                    REAL_HEART, folder / f"real_{steps}", *ckpt, *real, "--refine-steps", str(steps)
                )
                for steps in real_steps
            }
            print("real heart done", flush=True)
        # latency and memory with every default (resolution 256), whatever the quality runs used
        results["latency"] = (
            runs[0, default_steps]
            if args.resolution == 256
            else run_reconstruct(phantoms[0], folder / "latency", *ckpt)
        )
        print(f"latency: {results['latency']['timings']['total_s']:.1f} s", flush=True)
        results["dense_vs_band"] = dense_vs_band(checkpoint, phantoms[0], 256)
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
    figure, (dice, refine) = plt.subplots(1, 2, figsize=(14, 4.5), constrained_layout=True)
    x = np.arange(10)
    for offset, key, label in (
        (-0.2, "phantoms_no_refinement", "no refinement"),
        (0.2, "phantoms", f"default ({results['default_refine_steps']} refinement steps)"),
    ):
        per_class = _per_class_mean(results[key], "dice")
        dice.bar(x + offset, list(per_class.values()), width=0.4, label=label)
    dice.set_xticks(x, list(per_class), rotation=45, ha="right")
    dice.set(ylim=(0, 1), ylabel="Dice", title=f"unseen phantoms ({len(results['phantoms'])})")
    dice.legend(loc="lower left")
    steps = [r["steps"] for r in results["refinement"]]
    refine.plot(steps, [r["summary"]["mean_dice"] for r in results["refinement"]], "o-",
                label="mean Dice, all classes")  # fmt: skip
    refine.plot(steps, [r["summary"]["mean_dice_large"] for r in results["refinement"]], "s-",
                label="mean Dice, seven large")  # fmt: skip
    refine.set(xlabel="refinement steps", ylabel="Dice", title="refinement on one phantom")
    refine.legend(loc="lower right")
    seconds = refine.twinx()
    seconds.plot(steps, [r["total_s"] for r in results["refinement"]], "k--", alpha=0.5)
    seconds.set_ylabel("total seconds (dashed)")
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _means(reports: list[dict[str, Any]]) -> dict[str, float]:
    return {
        key: float(np.mean([r["summary"][key] for r in reports]))
        for key in ("mean_dice", "mean_dice_large", "mean_hd95_mm")
    }


def update_benchmarks(results: dict[str, Any]) -> None:
    reports, plain = results["phantoms"], results["phantoms_no_refinement"]
    summary, without = _means(reports), _means(plain)
    steps = results["default_refine_steps"]
    latency = results["latency"]["timings"]["total_s"]
    wall = results["latency"]["wall_s"]
    memory = results["latency"]["peak_memory_mb"]
    band = results["dense_vs_band"]
    lines = [
        f"Measured {results['date']} on {results['machine']} by "
        f"`bench/reconstruct.py`, checkpoint `{results['checkpoint']}`; unseen phantoms "
        "(seeds the training set never had), 256^3 at 1 mm, quality runs at resolution "
        f"{results['resolution']}; default settings = resolution 256, {steps} refinement steps, "
        f"decoding in {results['latency'].get('precision', 'fp32')} (`--precision auto`).",
        "",
        "| what | default settings | no refinement | target |",
        "|---|---|---|---|",
        f"| unseen phantoms ({len(reports)}), mean Dice all classes | "
        f"{summary['mean_dice']:.3f} | {without['mean_dice']:.3f} | >= 0.85 (no refinement: "
        "aim >= 0.75) |",
        f"| mean Dice, seven large structures | {summary['mean_dice_large']:.3f} | "
        f"{without['mean_dice_large']:.3f} | >= 0.92 |",
        f"| mean HD95 | {summary['mean_hd95_mm']:.2f} mm | {without['mean_hd95_mm']:.2f} mm "
        "| <= 3 mm |",
        f"| latency 256^3 at resolution 256, default settings (pipeline / whole process) | "
        f"{latency:.1f} s / {wall:.1f} s | | <= 60 s on CPU |",
        f"| peak memory | {memory:,.0f} MB | | < 6 GB |",
        f"| decode, band vs dense grid | {band['band_s']:.1f} s vs {band['dense_s']:.1f}"
        f" s ({band['ratio']:.1f}x faster; {band['band_points']:,} vs "
        f"{band['dense_points']:,} points) | | |",
    ]
    for label, group in (("default", reports), ("no refinement", plain)):
        per_class = _per_class_mean(group, "dice")
        lines.append(
            f"| per-class Dice, {label} | "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_class.items())
            + " | | |"
        )
    for row in results["refinement"]:
        lines.append(
            f"| refinement {row['steps']} steps (phantom {results['seeds'][0]}) | mean Dice "
            f"{row['summary']['mean_dice']:.3f}, large {row['summary']['mean_dice_large']:.3f},"
            f" {row['total_s']:.1f} s | | |"
        )
    for real_steps, report in results.get("real_heart", {}).items():
        s = report["summary"]
        lines.append(
            f"| real heart (`--labels mmwhs`), refinement {real_steps} | mean Dice "
            f"{s['mean_dice']:.3f}, large {s['mean_dice_large']:.3f}, HD95 "
            f"{s['mean_hd95_mm']:.2f} mm, {report['timings']['total_s']:.1f} s | | |"
        )
    lines += ["", "![reconstruction benchmark](bench/results/reconstruct.png)"]
    write_section("bench/reconstruct.py", "Reconstruction (`heartvec reconstruct`)", lines)


if __name__ == "__main__":
    sys.exit(main())
