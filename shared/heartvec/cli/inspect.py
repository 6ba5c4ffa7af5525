"""`heartvec inspect FILE`: what a label volume holds, and whether heartvec can use it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from heartvec.labels import load_label_table
from heartvec.volume import load_label_volume


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec inspect",
        description="Show shape, spacing, orientation, labels and voxel counts of a volume, "
        "and validate it (exit 2 with one message when it cannot be used).",
    )
    parser.add_argument("file", help="a .nii or .nii.gz label volume")
    parser.add_argument(
        "--labels", default="default", help="default, mmwhs, mmwhs-raw or a JSON/YAML file"
    )
    parser.add_argument(
        "--ignore-unknown-labels",
        action="store_true",
        help="treat label values missing from the table as background",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = load_label_table(args.labels)
    volume = load_label_volume(args.file, table, args.ignore_unknown_labels)
    voxel_ml = volume.voxel_volume_mm3 / 1000
    labels = []
    for value, count in sorted(volume.label_counts.items()):
        class_index = table.class_of_value.get(value)
        name = (
            "background"
            if value == 0
            else table.class_name(class_index)
            if class_index
            else "unknown"
        )
        labels.append({"value": value, "class": name, "voxels": count, "ml": count * voxel_ml})
    report = {
        "file": volume.path,
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "affine": np.round(volume.affine, 6).tolist(),
        "label_table": table.name,
        "labels": labels,
        "ignored_unknown_labels": volume.unknown_labels,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"file         {report['file']}")
    print(f"shape        {' x '.join(map(str, volume.shape))} voxels")
    print(f"spacing      {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm")
    print(f"orientation  {volume.orientation} (RAS+ world, nibabel convention)")
    print(f"label table  {table.name}")
    print(f"{'value':>7}  {'class':<20} {'voxels':>12} {'mL':>9}")
    for row in labels:
        print(f"{row['value']:>7}  {row['class']:<20} {row['voxels']:>12,} {row['ml']:>9.2f}")
    if volume.unknown_labels:
        print(f"ignored unknown label values (set to background): {volume.unknown_labels}")
    return 0
