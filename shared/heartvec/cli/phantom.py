"""`heartvec phantom OUT_DIR --count N --seed S`: synthetic whole-heart label volumes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
from tqdm import tqdm

from heartvec.phantom import make_phantom


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec phantom",
        description="Write N synthetic whole-heart label volumes (default label table, RAS+, "
        "oriented like a chest CT) as OUT_DIR/phantom_sSEED_NNN.nii.gz.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--count", type=int, default=1, help="how many volumes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first volume (default 0)")
    parser.add_argument("--size", type=int, default=256, help="voxels per axis (default 256)")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (default 1.0)")
    return parser


def phantom_path(out_dir: Path, seed: int) -> Path:
    """Where the phantom of `seed` is written."""
    return out_dir / f"phantom_s{seed:04d}.nii.gz"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16 or args.spacing <= 0:
        parser.error("need --count >= 1, --size >= 16 and --spacing > 0")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for seed in tqdm(range(args.seed, args.seed + args.count), desc="phantoms", unit="volume"):
        labels, affine = make_phantom(seed, size=args.size, spacing=args.spacing)
        image = nib.Nifti1Image(labels, affine)
        image.header.set_xyzt_units("mm")
        nib.save(image, phantom_path(args.out_dir, seed))
    print(f"wrote {args.count} phantom(s) to {args.out_dir}")
    return 0
