"""`heartvec augment INPUTS... --out DIR --count N --seed S [--strength F] [--workers W]`:
training volumes made from real subjects, each another plausible heart (`heartvec.augment`). A
volume depends on its input, seed and strength only, so W processes write the same volumes as
one; its header's description records the seed and strength."""

from __future__ import annotations

import argparse
import functools
import gzip
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from heartvec.augment import MAX_STRENGTH, AugmentRanges, augment
from heartvec.labels import load_label_table
from heartvec.volume import LabelVolume, load_label_volume


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
    parser.add_argument(
        "--strength",
        type=float,
        default=1.0,
        metavar="F",
        help="how far the hearts depart from their subject: the rotation, scale, anisotropy, "
        f"translation, per-structure scale and deformation ranges times F (0 to {MAX_STRENGTH:g}; "
        "default 1)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    return parser


def augmented_path(out_dir: Path, source: Path, seed: int) -> Path:
    stem = source.name.removesuffix(".gz").removesuffix(".nii")
    return out_dir / f"{stem}_aug_s{seed:04d}.nii.gz"


@functools.cache
def _subject(path: Path, labels: str) -> LabelVolume:
    """An input, loaded once per process."""
    return load_label_volume(path, load_label_table(labels))


def make_one(path: Path, labels: str, seed: int, out_dir: Path, strength: float = 1.0) -> Path:
    """One augmented volume, written whole or not at all."""
    ranges = AugmentRanges().scaled(strength)
    labels_out, affine = augment(_subject(path, labels), np.random.default_rng(seed), ranges)
    target = augmented_path(out_dir, path, seed)
    partial = target.with_name(target.name + ".part")  # never taken for an input
    image = nib.Nifti1Image(labels_out, affine)
    image.header["descrip"] = f"heartvec augment seed {seed} strength {strength:g}"
    partial.write_bytes(gzip.compress(image.to_bytes(), 6))
    partial.replace(target)
    return target


def _make_all(jobs: list[tuple[Path, str, int, Path, float]], workers: int) -> None:
    progress = tqdm(total=len(jobs), desc="augment", unit="volume")
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            make_one(*job)
            progress.update()
    else:
        _subject.cache_clear()  # the processes load their own
        workers = min(workers, len(jobs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(make_one, *job) for job in jobs]):
                future.result()
                progress.update()
    progress.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not 0.0 <= args.strength <= MAX_STRENGTH:
        parser.error(f"--strength must be 0 to {MAX_STRENGTH:g}")
    try:
        for path in args.inputs:  # a bad input or table fails here, before any work
            _subject(path, args.labels)
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = [(path, args.labels, args.seed + i, args.out, args.strength) for path in args.inputs
                for i in range(args.count)]  # fmt: skip
        _make_all(jobs, args.workers)
    finally:
        _subject.cache_clear()  # a caller's process (tests, notebooks) keeps no volume
    print(f"wrote {len(jobs)} volume(s) to {args.out}")
    return 0
