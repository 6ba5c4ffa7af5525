"""Volumes the benchmarks run on: phantoms of a seed as `heartvec reconstruct` would load them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib

from heartvec.labels import load_label_table
from heartvec.phantom import make_phantom
from heartvec.volume import LabelVolume, load_label_volume


def phantom_volume(seed: int, size: int = 256, spacing: float = 1.0) -> LabelVolume:
    """The phantom of `seed` (256^3 at 1 mm unless told), written to a NIfTI file and loaded
    back with the default label table, as the command line would."""
    labels, affine = make_phantom(seed, size=size, spacing=spacing)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"phantom_s{seed}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), path)
        return load_label_volume(path, load_label_table("default"))
