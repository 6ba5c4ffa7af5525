"""Benchmark of `heartvec prepare` against the previous attempt's route; updates BENCHMARKS.md.

Measures, in one run on this machine:
- one 256^3 phantom with 10 classes at the default point counts, `--workers 1` (target <= 10 s);
- the previous route (trimesh `contains` with rtree ray casting + `nearest.on_surface` on one
  merged mesh of all classes) on a subset of the same query points, extrapolated to the same
  200,000 query points, and its sign agreement with the label volume;
- the real heart of ../shared (512x512x248): time and peak memory (target < 4 GB);
- throughput of 4 phantoms with `--workers 1` and `--workers 2`.

Usage: .venv/bin/python bench/prepare.py [--baseline-points 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
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
import trimesh
from benchmarks_md import save_json, utc_now, write_section

from heartvec.labels import load_label_table
from heartvec.normalization import fixed_normalization
from heartvec.phantom import make_phantom
from heartvec.samples import SampleSettings, near_surface_points, sample_surfaces
from heartvec.surfaces import class_surfaces
from heartvec.volume import load_label_volume

REPO = Path(__file__).resolve().parents[1]
REAL_HEART = REPO.parent / "shared" / "data" / "whole_heart_mmwhs_labels.nii.gz"
HEARTVEC = str(Path(sys.executable).parent / "heartvec")


def write_phantom(folder: Path, seed: int) -> Path:
    labels, affine = make_phantom(seed, size=256, spacing=1.0)
    path = folder / f"phantom_s{seed:04d}.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path


def run_prepare(inputs: list[Path], out: Path, *extra: str) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds of one `heartvec prepare` run and its per-file quality records."""
    started = time.perf_counter()
    subprocess.run(
        [HEARTVEC, "prepare", *map(str, inputs), "--out", str(out), *extra],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "quality.json").read_text())["files"]


def baseline_route(phantom: Path, count: int) -> dict[str, Any]:
    """The previous attempt: one merged mesh, ray-parity inside test, trimesh closest point."""
    volume = load_label_volume(phantom, load_label_table("default"))
    surfaces = class_surfaces(volume)
    merged: trimesh.Trimesh = trimesh.util.concatenate(  # type: ignore[assignment]
        [trimesh.Trimesh(s.vertices, s.faces, process=False) for s in surfaces.values()]
    )
    rng = np.random.default_rng(0)
    normalization = fixed_normalization(surfaces)
    surface_world, _, _ = sample_surfaces(surfaces, 10_000, rng)
    near = near_surface_points(
        normalization.to_normalized(surface_world), count // 2, (0.005, 0.05), rng
    )
    vol = rng.uniform(-1, 1, size=(count - count // 2, 3))
    points = normalization.to_world(np.concatenate([vol, near]))
    started = time.perf_counter()
    inside = merged.contains(points)
    contains_s = time.perf_counter() - started
    started = time.perf_counter()
    _, distance, _ = merged.nearest.on_surface(points)
    nearest_s = time.perf_counter() - started
    truth_inside = volume.class_at(points) > 0
    far = distance > 2 * volume.half_voxel_diagonal_mm
    return {
        "points": count,
        "faces": len(merged.faces),
        "contains_s": contains_s,
        "nearest_s": nearest_s,
        "seconds_per_point": (contains_s + nearest_s) / count,
        "sign_agreement_far": float((inside[far] == truth_inside[far]).mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-points", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": utc_now(),
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{_cores()} cores, Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        phantom = write_phantom(folder, 0)
        runs = []
        for repeat in range(args.repeats):
            seconds, records = run_prepare([phantom], folder / f"one_{repeat}", "--workers", "1")
            runs.append({"wall_s": seconds, **records[0]["timings"]})
            faces = sum(c["faces"] for c in records[0]["quality"]["per_class"].values())
        median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        queries = SampleSettings().vol_points + SampleSettings().near_points
        results["phantom"] = {"runs": runs, "median": median, "faces": faces, "queries": queries}
        print(f"ours: {median}", flush=True)

        baseline = baseline_route(phantom, args.baseline_points)
        baseline["extrapolated_s"] = baseline["seconds_per_point"] * queries
        baseline["ratio"] = baseline["extrapolated_s"] / median["sdf_s"]
        results["baseline"] = baseline
        print(f"baseline: {baseline}", flush=True)

        if REAL_HEART.is_file():
            seconds, records = run_prepare([REAL_HEART], folder / "real", "--labels", "mmwhs")
            results["real_heart"] = {
                "wall_s": seconds,
                **records[0]["timings"],
                "peak_rss_mb": records[0]["worker_peak_rss_mb"],
                "sign_agreement_far": records[0]["quality"]["sign_agreement_far"],
            }
            print(f"real heart: {results['real_heart']}", flush=True)

        batch = [write_phantom(folder, seed) for seed in range(1, 5)]
        throughput = {}
        for workers in (1, 2):
            seconds, _ = run_prepare(batch, folder / f"w{workers}", "--workers", str(workers))
            throughput[workers] = {"wall_s": seconds, "volumes_per_min": 60 * len(batch) / seconds}
        results["throughput"] = throughput
        print(f"throughput: {throughput}", flush=True)

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    save_json(out_dir / "prepare.json", results)
    plot(results, out_dir / "prepare.png")
    update_benchmarks(results)
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def plot(results: dict[str, Any], path: Path) -> None:
    """Stage times of one 256^3 volume, and the baseline's extrapolated time, log scale."""
    median = results["phantom"]["median"]
    stages = ["load_s", "marching_cubes_s", "sampling_s", "sdf_s", "write_s"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    left.barh([s.removesuffix("_s") for s in stages], [median[s] for s in stages])
    left.set(title=f"heartvec prepare, 256^3, 10 classes: {median['total_s']:.1f} s", xlabel="s")
    baseline = results["baseline"]
    labels = ["heartvec SDF (10 classes)", "previous route (1 merged SDF)"]
    right.bar(labels, [median["sdf_s"], baseline["extrapolated_s"]], color=["C0", "C3"])
    right.set_yscale("log")
    right.set(title=f"200k query points: {baseline['ratio']:,.0f}x faster", ylabel="s (log)")
    figure.savefig(path, dpi=90)
    plt.close(figure)


def update_benchmarks(results: dict[str, Any]) -> None:
    """Replace this script's section of BENCHMARKS.md with the figures just measured."""
    median = results["phantom"]["median"]
    baseline = results["baseline"]
    lines = [
        f"Measured {results['date']} on {results['machine']} by `bench/prepare.py`.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| one 256^3 phantom, 10 classes, 100k+100k+100k points, `--workers 1` (median of "
        f"{len(results['phantom']['runs'])}) | **{median['total_s']:.2f} s** in prepare "
        f"({median['wall_s']:.2f} s wall incl. start-up) | <= 10 s |",
        f"| of which exact SDF, 200k points x 10 classes, {results['phantom']['faces']:,} faces "
        f"| {median['sdf_s']:.2f} s | |",
        f"| previous route (trimesh contains + nearest.on_surface, merged mesh of "
        f"{baseline['faces']:,} faces), {baseline['points']} points | "
        f"{baseline['seconds_per_point'] * 1000:.1f} ms/point, "
        f"{baseline['extrapolated_s'] / 3600:.2f} h for 200k points (one merged SDF only) | |",
        f"| speed-up of the SDF stage over the previous route | **{baseline['ratio']:,.0f}x** "
        f"(for 10 SDFs per point against its 1) | > 1000x |",
        f"| previous route: sign agreement with the label volume, points > 1 voxel from "
        f"surfaces | {100 * baseline['sign_agreement_far']:.1f}% | heartvec: 100% |",
    ]
    if "real_heart" in results:
        real = results["real_heart"]
        lines.append(
            f"| real heart 512x512x248 (mmwhs), 7 classes | {real['total_s']:.2f} s, peak "
            f"{real['peak_rss_mb']:,} MB, sign agreement {100 * real['sign_agreement_far']:.2f}% "
            f"| < 4 GB per worker, >= 99.9% |"
        )
    for workers, figures in results["throughput"].items():
        lines.append(
            f"| 4 phantoms 256^3, `--workers {workers}` | {figures['wall_s']:.1f} s, "
            f"{figures['volumes_per_min']:.2f} volumes/min | grows with workers |"
        )
    lines += ["", "![prepare benchmark](bench/results/prepare.png)"]
    write_section("bench/prepare.py", "Preparation (`heartvec prepare`)", lines)


if __name__ == "__main__":
    sys.exit(main())
