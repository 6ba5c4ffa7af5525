"""`heartvec augment INPUTS... --out DIR --count N --seed S`: training volumes made from real
subjects, each another plausible heart (`heartvec.augment`)."""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from heartvec.augment import augment
from heartvec.labels import load_label_table
from heartvec.volume import load_label_volume


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec augment",
        description="Make COUNT training volumes from each input (a real subject): a smooth "
        "random deformation, a scale per structure, a rotation, scale and translation, a "
        "CT- or MRI-like scan's spacing, great vessels cut where a field of view would end. "
        "Writes DIR/<input>_aug_sSEED.nii.gz in the default label table (label = class "
        "index); classes an input lacks stay absent.",
    )
    parser.add_argument("inputs", type=Path, nargs="+", help=".nii or .nii.gz label volumes")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, default=10, help="volumes per input (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (one per volume)")
    parser.add_argument("--labels", default="default", help="the inputs' label table")
    return parser


def augmented_path(out_dir: Path, source: Path, seed: int) -> Path:
    stem = source.name.removesuffix(".gz").removesuffix(".nii")
    return out_dir / f"{stem}_aug_s{seed:04d}.nii.gz"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    table = load_label_table(args.labels)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(path, args.seed + i) for path in args.inputs for i in range(args.count)]
    volumes = {path: load_label_volume(path, table) for path in args.inputs}
    for path, seed in tqdm(jobs, desc="augment", unit="volume"):
        labels, affine = augment(volumes[path], np.random.default_rng(seed))
        target = augmented_path(args.out, path, seed)
        partial = target.with_name(target.name + ".part")  # never taken for an input
        partial.write_bytes(gzip.compress(nib.Nifti1Image(labels, affine).to_bytes(), 6))
        partial.replace(target)
    print(f"wrote {len(jobs)} volume(s) to {args.out}")
    return 0
