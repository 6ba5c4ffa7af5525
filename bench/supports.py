"""Structure where the input has none: per class, the share of reconstructed voxels farther than
10 mm from that class in the input, with each class held to its support (the default) and
without (`support_margin_mm=None`, the previous behaviour), on the real subjects and unseen
phantoms; Dice and HD95 of both. Updates BENCHMARKS.md.

The bundled checkpoint was trained on phantoms only: neither real subject shaped it.

Usage: .venv/bin/python bench/supports.py [--resolution 256] [--seeds 5000 5001]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from benchmarks_md import measured, save_json, write_section
from reconstruct import REPO
from scipy.ndimage import distance_transform_edt
from tqdm import tqdm

from heartvec.labels import LabelTable, load_label_table
from heartvec.phantom import make_phantom
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.settings import default_checkpoint
from heartvec_testing.volumes import write_nifti

DATA = REPO.parent / "shared" / "data"
SUBJECTS = {
    "real A (mmwhs)": (DATA / "whole_heart_mmwhs_labels.nii.gz", "mmwhs"),
    "real B (mmwhs-raw)": (DATA / "second_heart_mmwhs_raw_labels.nii.gz", "mmwhs-raw"),
}
FAR_MM = 10.0


def classes_of(labels: np.ndarray, table: LabelTable) -> np.ndarray:
    """Class index per voxel of a label volume in the table's values (0: not in the table)."""
    values = np.rint(labels).astype(np.int64)
    lookup = np.zeros(max(int(values.max()), max(table.class_of_value)) + 1, dtype=np.uint8)
    for value, class_index in table.class_of_value.items():
        lookup[value] = class_index
    return lookup[np.clip(values, 0, None)]


def far_shares(
    reference: np.ndarray, reconstructed: np.ndarray, spacing: np.ndarray
) -> dict[int, float]:
    """Per class of the reconstruction, the share of its voxels farther than FAR_MM from that
    class in the reference (exact, on the voxels' own grid, over both masks' box + FAR_MM)."""
    shares = {}
    for class_index in map(int, np.unique(reconstructed[reconstructed > 0])):
        mine, theirs = reconstructed == class_index, reference == class_index
        if not theirs.any():
            shares[class_index] = 1.0
            continue
        hits = np.argwhere(mine | theirs)
        pad = np.ceil(FAR_MM / spacing).astype(int) + 1
        low = np.maximum(hits.min(axis=0) - pad, 0)
        high = np.minimum(hits.max(axis=0) + pad + 1, reference.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        distance = distance_transform_edt(~theirs[box], sampling=spacing)
        shares[class_index] = float((distance[mine[box]] > FAR_MM).mean())
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the section from the saved results"
    )
    args = parser.parse_args()
    saved = REPO / "bench" / "results" / "supports.json"
    if args.report_only:
        write_report(json.loads(saved.read_text()))
        return 0
    loaded = load_model(default_checkpoint())
    cases = {name: spec for name, spec in SUBJECTS.items() if spec[0].is_file()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for seed in args.seeds:
            labels, affine = make_phantom(seed, size=256, spacing=1.0)
            path = write_nifti(folder / f"phantom_s{seed}.nii.gz", labels, affine)
            cases[f"phantom {seed}"] = (path, "default")
        for name, (path, table_name) in tqdm(cases.items(), desc="cases"):
            table = load_label_table(table_name)
            source: Any = nib.load(path)
            reference = classes_of(np.asarray(source.dataobj), table)
            spacing = np.asarray(source.header.get_zooms()[:3], dtype=np.float64)
            for margin in (None, ReconstructSettings().support_margin_mm):
                out = folder / f"{name}-{margin}".replace(" ", "_")
                settings = ReconstructSettings(resolution=args.resolution, support_margin_mm=margin)
                report = reconstruct(path, out, table, loaded, settings)
                written: Any = nib.load(out / "reconstruction.nii.gz")
                image = np.asarray(written.dataobj)
                reconstructed = classes_of(image, table)
                shares = far_shares(reference, reconstructed, spacing)
                rows.append({
                    "case": name, "supports": margin is not None,
                    "mean_dice": report["summary"]["mean_dice"],
                    "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                    "max_hd95_mm": report["summary"]["max_hd95_mm"],
                    "far_share": {table.class_name(c): s for c, s in shares.items()},
                    "outside_support": report["grid"]["outside_support"],
                    "total_s": report["timings"]["total_s"],
                })  # fmt: skip
    summary = {
        **measured(),
        "resolution": args.resolution,
        "checkpoint": str(default_checkpoint().name),
        "rows": rows,
    }
    save_json(saved, summary)
    write_report(summary)
    for r in rows:
        print(json.dumps(r))
    return 0


def write_report(summary: dict[str, Any]) -> None:
    """The section of BENCHMARKS.md and its picture, from the results."""
    rows = summary["rows"]
    plot(rows, REPO / "bench" / "results" / "supports.png")
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/supports.py` (bundled "
        f"checkpoint, defaults, resolution {summary['resolution']}; the checkpoint saw phantoms "
        "only, neither real subject). Far: the share of a class's reconstructed voxels farther "
        "than 10 mm from that class in the input (exact distances on the input's grid).",
        "",
        "| case | supports | mean Dice | mean HD95 | max HD95 | farthest class: share far | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, share = max(r["far_share"].items(), key=lambda item: item[1], default=("", 0.0))
        far = f"{name} {100 * share:.2f}%" if share > 0 else "none"
        lines.append(
            f"| {r['case']} | {'on' if r['supports'] else 'off (before)'} | "
            f"{r['mean_dice']:.3f} | {r['mean_hd95_mm']:.2f} mm | {r['max_hd95_mm']:.1f} mm | "
            f"{far} | {r['total_s']:.1f} s |"
        )
    lines += ["", "![far from the input](bench/results/supports.png)"]
    write_section("bench/supports.py", "Structure far from the input", lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Per case, each class's share of voxels far from it in the input, off vs on."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    figure, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4.4), squeeze=False)
    for axis, case in zip(axes[0], cases, strict=True):
        runs = [r for r in rows if r["case"] == case]
        names = list(dict.fromkeys(n for r in runs for n in r["far_share"]))
        x = np.arange(len(names))
        for offset, run in zip((-0.2, 0.2), runs, strict=False):
            shares = [100 * run["far_share"].get(n, 0.0) for n in names]
            label = "supports on" if run["supports"] else "off (before)"
            axis.bar(x + offset, shares, 0.4, color="C0" if run["supports"] else "C3", label=label)
        axis.set_xticks(x, [n.replace("_", " ") for n in names], rotation=90)
        axis.set(title=case, ylabel="% of voxels > 10 mm from the input's class")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
