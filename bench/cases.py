"""Volumes the benchmarks run on: the real subjects of ../shared (the held-out one first) and
phantoms of a seed, as files or as `heartvec reconstruct` would load them."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
from reconstruct import REPO

from heartvec.labels import load_label_table
from heartvec.phantom import make_phantom
from heartvec.volume import LabelVolume, load_label_volume
from heartvec_testing.volumes import write_nifti

DATA = REPO.parent / "shared" / "data"
REAL = {
    "real B": (DATA / "second_heart_mmwhs_raw_labels.nii.gz", "mmwhs-raw"),
    "real A": (DATA / "whole_heart_mmwhs_labels.nii.gz", "mmwhs"),
}
"""name -> (file, label table) of the real subjects; the bundled checkpoint trained on A."""


def add_trained_on(parser: argparse.ArgumentParser) -> None:
    """`--trained-on A|B` (and the older `--trained-on-a`): the real subject a run trained on."""
    parser.add_argument(
        "--trained-on",
        choices=["A", "B"],
        help="the real subject the run trained on (hearts made from it); the other is held out",
    )
    parser.add_argument(
        "--trained-on-a", dest="trained_on", action="store_const", const="A", help="--trained-on A"
    )


def subject_cases(
    folder: Path, phantom_seeds: list[int], trained_on: str | None = None
) -> dict[str, tuple[Path, str]]:
    """name -> (file, label table): the real subjects found, the one not `trained_on` first (B
    when None), then the phantoms of `phantom_seeds` (256^3 at 1 mm) written into `folder`."""
    order = ["real A", "real B"] if trained_on == "B" else ["real B", "real A"]
    cases = {name: REAL[name] for name in order if REAL[name][0].is_file()}
    for seed in phantom_seeds:
        labels, affine = make_phantom(seed, size=256, spacing=1.0)
        path = write_nifti(folder / f"phantom_s{seed}.nii.gz", labels, affine)
        cases[f"phantom {seed}"] = (path, "default")
    return cases


def phantom_volume(seed: int, size: int = 256, spacing: float = 1.0) -> LabelVolume:
    """The phantom of `seed` (256^3 at 1 mm unless told), written to a NIfTI file and loaded
    back with the default label table, as the command line would."""
    labels, affine = make_phantom(seed, size=size, spacing=spacing)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"phantom_s{seed}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), path)
        return load_label_volume(path, load_label_table("default"))
