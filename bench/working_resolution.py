"""The working spacing of the input's class surfaces (`ReconstructSettings.working_mm`): what it
changes in quality (mean Dice and HD95 against the input's own labels) and in time, on the real
CT scans in ../shared/data and a 256^3 phantom at 1 mm, with the defaults otherwise. The model
is loaded once; each case and spacing runs once per seed (the refinement's fit points and the
encoder's points: on a real heart the defaults' Dice moves by ~0.005 from one seed to another),
interleaved. Updates BENCHMARKS.md.

Usage: .venv/bin/python bench/working_resolution.py [--spacings none 1 1.5] [--seeds 0 1 2]
       [--cases phantom A B] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import measured, save_json, write_section
from real_ct import DATA, scans
from reconstruct import REPO
from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.phantom import make_phantom
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.settings import default_checkpoint
from heartvec.surfaces import class_surfaces
from heartvec.volume import load_label_volume
from heartvec_testing.volumes import write_nifti

SAVED = REPO / "bench" / "results" / "working_resolution.json"
SHOWN = ("load_s", "encode_s", "refine_s", "report_s")


def spacing_value(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def label(working_mm: float | None) -> str:
    return "input's voxels" if working_mm is None else f"{working_mm:g} mm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacings", type=spacing_value, nargs="+", default=[None, 1.0, 1.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", nargs="+", default=["phantom", "A", "B"])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(SAVED.read_text()))
        return 0
    loaded = load_model(default_checkpoint(), "cpu")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        labels, affine = make_phantom(5000, size=256, spacing=1.0)
        phantom = write_nifti(folder / "phantom.nii.gz", labels, affine)
        cases = {"phantom 256^3": (phantom, "default")} if "phantom" in args.cases else {}
        cases |= {
            f"{name} scan": case
            for name, case in scans(DATA).items()
            if name in args.cases and case[0].is_file()
        }
        triangles = {}
        for case, (path, table) in cases.items():
            volume = load_label_volume(path, load_label_table(table))
            volume = volume.crop(*volume.foreground_box(margin=2))
            for working in args.spacings:
                surfaces = class_surfaces(volume, working)
                triangles[f"{case}|{working}"] = sum(len(s.faces) for s in surfaces.values())
        # a 1 mm phantom's surfaces are the same at every spacing up to 1 mm
        # (tests/test_surfaces.py): its first seed shows it
        jobs = [(case, w, seed) for seed in args.seeds for case in cases for w in args.spacings
                if seed == args.seeds[0] or not case.startswith("phantom")]  # fmt: skip
        for case, working, seed in tqdm(jobs, desc="reconstructions"):
            path, table = cases[case]
            settings = ReconstructSettings(working_mm=working, seed=seed)
            report = reconstruct(path, folder / "out", load_label_table(table), loaded, settings)
            runs.append({
                "case": case, "working_mm": working, "seed": seed, "timings": report["timings"],
                "mean_dice": report["summary"]["mean_dice"],
                "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                "triangles": triangles[f"{case}|{working}"],
            })  # fmt: skip
            print(json.dumps(runs[-1]), flush=True)
    summary = {
        **measured(),
        "checkpoint_sha256": loaded.sha256,
        "spacings": args.spacings,
        "runs": runs,
    }
    save_json(SAVED, summary)
    write_report(summary)
    return 0


def rows(summary: dict[str, Any]) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per (case, spacing): the median timings and the mean quality over the seeds, with the
    quality's range."""
    grouped: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        grouped.setdefault((run["case"], run["working_mm"]), []).append(run)
    result = {}
    for key, runs in grouped.items():
        timings = {k: float(np.median([r["timings"][k] for r in runs])) for k in runs[0]["timings"]}
        quality = {
            k: float(np.mean([r[k] for r in runs])) for k in ("mean_dice", "mean_hd95_mm")
        } | {
            f"{k}_range": (float(min(r[k] for r in runs)), float(max(r[k] for r in runs)))
            for k in ("mean_dice", "mean_hd95_mm")
        }
        result[key] = {**runs[0], **quality, "timings": timings, "seeds": len(runs)}
    return result


def write_report(summary: dict[str, Any]) -> None:
    table = rows(summary)
    cases = list(dict.fromkeys(case for case, _ in table))
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/working_resolution.py` "
        f"(checkpoint sha256 `{summary['checkpoint_sha256'][:12]}`, defaults but the working "
        "spacing, one process, the model loaded once; quality: the mean over the seeds [their "
        "range], timings: the median). Dice on the input's own labels and grid; HD95 between "
        "the reconstruction's meshes and the input's surfaces at that spacing. Triangles: of "
        "the input's class surfaces.",
        "",
        "| case | working spacing | seeds | triangles | mean Dice | mean HD95 | pipeline | "
        + " | ".join(k.removesuffix("_s") for k in SHOWN)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(SHOWN),
    ]
    for (case, working), row in table.items():
        cells = [f"{row['timings'][k]:.2f}" for k in SHOWN]
        dice, hd95 = row.get("mean_dice_range", (0, 0)), row.get("mean_hd95_mm_range", (0, 0))
        lines.append(
            f"| {case} | {label(working)} | {row.get('seeds', 1)} | {row['triangles']:,} | "
            f"{row['mean_dice']:.4f} [{dice[0]:.4f}-{dice[1]:.4f}] | "
            f"{row['mean_hd95_mm']:.2f} mm [{hd95[0]:.2f}-{hd95[1]:.2f}] | "
            f"{row['timings']['total_s']:.1f} s | " + " | ".join(cells) + " |"
        )
    lines += ["", "![working spacing](bench/results/working_resolution.png)"]
    write_section("bench/working_resolution.py", "Working spacing of the input's surfaces", lines)
    figure, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for index, case in enumerate(cases):
        keys = [(c, w) for c, w in table if c == case]
        x = [0.0 if w is None else w for _, w in keys]  # 0: the input's own voxels
        for axis, value in zip(axes, ("mean_dice", "mean_hd95_mm", "total_s"), strict=True):
            y = [table[k]["timings"]["total_s"] if value == "total_s" else table[k][value]
                 for k in keys]  # fmt: skip
            axis.plot(x, y, "o-", color=f"C{index}", label=case)
    for axis, name in zip(axes, ("mean Dice", "mean HD95 (mm)", "pipeline (s)"), strict=True):
        axis.set(xlabel="working spacing, mm (0: the input's voxels)", ylabel=name, title=name)
        axis.legend(fontsize="small")
    figure.suptitle("working spacing of the input's class surfaces (defaults otherwise)")
    figure.savefig(SAVED.with_suffix(".png"), dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
