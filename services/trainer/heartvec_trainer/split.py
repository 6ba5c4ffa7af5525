"""`heartvec split DIR`: a seeded, stable train/validation split of a prepared folder."""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Sequence
from pathlib import Path

from heartvec.errors import InputError


def split_names(
    names: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Assign each name to train or val by a hash of (seed, name).

    Stable: adding files later never moves an existing file between splits.

    Args:
        names: sample names (file names without `.npz`).
        val_fraction: expected share of validation samples, in [0, 1).
        seed: changes the assignment.
    """
    train: list[str] = []
    val: list[str] = []
    for name in sorted(names):
        bucket = zlib.crc32(f"{seed}:{name}".encode()) / 2**32
        (val if bucket < val_fraction else train).append(name)
    # a tiny dataset still gets one sample on each side
    if val_fraction > 0 and not val and len(train) > 1:
        val.append(train.pop())
    if not train and len(val) > 1:
        train.append(val.pop(0))
    return train, val


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec split",
        description="Write DIR/train.csv and DIR/val.csv (one sample file name per line, "
        "header 'file') for the .npz files of a prepared folder.",
    )
    parser.add_argument("dir", type=Path, help="a folder written by heartvec prepare")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="default 0.2")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        raise InputError("--val-fraction", f"expected a value in [0, 1), got {args.val_fraction}")
    names = [p.stem for p in sorted(args.dir.glob("*.npz"))]
    if not names:
        raise InputError(args.dir, "no .npz files: run heartvec prepare first")
    train, val = split_names(names, args.val_fraction, args.seed)
    for split, members in (("train", train), ("val", val)):
        lines = ["file", *(f"{name}.npz" for name in members)]
        (args.dir / f"{split}.csv").write_text("\n".join(lines) + "\n")
    print(f"{len(train)} train, {len(val)} val -> {args.dir / 'train.csv'}, {args.dir / 'val.csv'}")
    return 0
