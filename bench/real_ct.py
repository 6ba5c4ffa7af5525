"""Real CT scans against their heart's crop and a 256^3 phantom: `heartvec reconstruct` with the
defaults, each case in its own process, the cases interleaved, stage timings from the reports.
The scans are the real subjects in ../shared/data (512 x 512 slices at 0.49 mm); a crop is the
scan cut to its heart's box + 15 mm, written as a file of its own. Updates BENCHMARKS.md.

Usage: .venv/bin/python bench/real_ct.py [--repeats 2] [--device cpu] [--data DIR]
A quick run (--resolution/--refine-steps other than the defaults, as the GPU check's CPU dry run
uses) prints its rows and writes neither results nor BENCHMARKS.md.
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
from benchmarks_md import measured, save_json, write_section
from reconstruct import REPO

from heartvec.phantom import make_phantom
from heartvec.reconstruction import defaults
from heartvec.reconstruction.pipeline import STAGES
from heartvec_testing.volumes import write_nifti

DATA = REPO.parent / "shared" / "data"
SCANS = {
    "A": ("whole_heart_mmwhs_labels.nii.gz", "mmwhs"),
    "B": ("second_heart_mmwhs_raw_labels.nii.gz", "mmwhs-raw"),
}
CROP_MARGIN_MM = 15.0
HEARTVEC = Path(sys.executable).parent / "heartvec"
if not HEARTVEC.exists():  # a system Python: its scripts may lie elsewhere on PATH
    HEARTVEC = Path(shutil.which("heartvec") or HEARTVEC)


def scans(data: Path) -> dict[str, tuple[Path, str]]:
    return {name: (data / file, table) for name, (file, table) in SCANS.items()}


def heart_crop(path: Path, out: Path) -> Path:
    """The scan cut to its foreground's box + CROP_MARGIN_MM, same voxels and world positions."""
    image: Any = nib.load(path)
    labels = np.asarray(image.dataobj)
    hits = np.argwhere(labels > 0)
    margin = np.ceil(CROP_MARGIN_MM / np.asarray(image.header.get_zooms()[:3])).astype(int)
    low = np.maximum(hits.min(axis=0) - margin, 0)
    high = np.minimum(hits.max(axis=0) + margin + 1, labels.shape)
    affine = image.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(image.affine, low)
    crop = labels[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    return write_nifti(out, crop, affine)


def run(case: str, path: Path, table: str, out: Path, options: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    subprocess.run(
        [HEARTVEC, "reconstruct", path, "--out", out, "--labels", table, *options],
        check=True, capture_output=True,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    image: Any = nib.load(path)
    return {
        "case": case, "process_s": round(time.perf_counter() - started, 2),
        "timings": report["timings"], "mean_dice": report["summary"]["mean_dice"],
        "mean_hd95_mm": report["summary"]["mean_hd95_mm"], "voxels": int(np.prod(image.shape)),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the real subjects")
    parser.add_argument("--resolution", type=int, help="quick runs only (default: the CLI's)")
    parser.add_argument("--refine-steps", type=int, help="quick runs only (default: the CLI's)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    options = ["--device", args.device]
    for flag, value in (("--resolution", args.resolution), ("--refine-steps", args.refine_steps)):
        options += [flag, str(value)] if value is not None else []
    quick = len(options) > 2
    saved = REPO / "bench" / "results" / f"real_ct_{args.device.split(':')[0]}.json"
    if args.report_only:
        write_report(json.loads(saved.read_text()), saved)
        return 0
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        labels, affine = make_phantom(5000, size=256, spacing=1.0)
        cases = {
            "phantom 256^3": (write_nifti(folder / "phantom.nii.gz", labels, affine), "default")
        }
        for name, (path, table) in scans(args.data).items():
            if path.is_file():
                cases[f"{name} scan"] = (path, table)
                cases[f"{name} crop"] = (heart_crop(path, folder / f"{name}_crop.nii.gz"), table)
        if len(cases) == 1:
            raise SystemExit(f"no real subject in {args.data}")
        for _ in range(args.repeats):
            for case, (path, table) in cases.items():
                runs.append(run(case, path, table, folder / "out", options))
                print(json.dumps(runs[-1]), flush=True)
    if quick:
        return 0
    summary = {
        **measured(),
        "device": args.device,
        "refine_steps": defaults.REFINE_STEPS,
        "runs": runs,
    }
    save_json(saved, summary)
    write_report(summary, saved)
    return 0


def write_report(summary: dict[str, Any], saved: Path) -> None:
    cases = list(dict.fromkeys(r["case"] for r in summary["runs"]))
    # the pipeline's stages that these runs timed (results saved before a stage existed lack it)
    stages = [s for s in STAGES if all(f"{s}_s" in r["timings"] for r in summary["runs"])]

    def median(case: str, key: str) -> float:
        values = [r["timings"][key] if key in r["timings"] else r[key] for r in summary["runs"]
                  if r["case"] == case]  # fmt: skip
        return float(np.median(values))

    lines = [
        f"Measured {summary['date']} on {summary['machine']}, device {summary['device']}, by "
        f"`bench/real_ct.py` (defaults: resolution 256, {summary.get('refine_steps', 400)} "
        "refinement steps; medians of interleaved runs, one process each).",
        "",
        "| case | voxels | pipeline | process | " + " | ".join(stages) + " | mean Dice |",
        "|---|---|---|---|" + "---|" * len(stages) + "---|",
    ]
    for case in cases:
        first = next(r for r in summary["runs"] if r["case"] == case)
        stage_cells = " | ".join(f"{median(case, f'{s}_s'):.2f}" for s in stages)
        lines.append(
            f"| {case} | {first['voxels'] / 1e6:.1f}M | {median(case, 'total_s'):.1f} s | "
            f"{median(case, 'process_s'):.1f} s | {stage_cells} | {first['mean_dice']:.3f} |"
        )
    ratios = []
    for name in ("A", "B"):
        if f"{name} scan" in cases:
            scan = median(f"{name} scan", "total_s")
            ratios.append(
                f"{name}: scan / crop {scan / median(f'{name} crop', 'total_s'):.3f}x, "
                f"scan / 256^3 phantom {scan / median('phantom 256^3', 'total_s'):.3f}x"
            )
    lines += ["", "Pipeline ratios (targets: scan within 1.05x of its crop, 1.3x of the "
              "phantom): " + "; ".join(ratios) + ".", "",
              f"![stage timings](bench/results/{saved.stem}.png)"]  # fmt: skip
    figure, axis = plt.subplots(figsize=(10, 0.6 * len(cases) + 1.5))
    left = np.zeros(len(cases))
    for index, stage in enumerate(stages):
        widths = np.array([median(case, f"{stage}_s") for case in cases])
        axis.barh(cases, widths, left=left, color=f"C{index}", label=stage)
        left += widths
    axis.set(xlabel="seconds (median)", title="heartvec reconstruct, stage by stage")
    axis.legend(ncol=5, fontsize=8)
    figure.tight_layout()
    figure.savefig(saved.with_suffix(".png"), dpi=80)
    write_section(f"bench/real_ct.py:{summary['device']}", "Real CT scans", lines)


if __name__ == "__main__":
    raise SystemExit(main())
