"""Label volumes for the tests and benchmarks: where the checkout and the real heart are, the
small phantoms' size, and a NIfTI writer."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
"""The checkout this package is installed from (editable, as `make` installs it)."""

REAL_HEART = REPO.parent / "shared" / "data" / "whole_heart_mmwhs_labels.nii.gz"
"""Subject A of the kit beside the repository (MM-WHS labels); absent outside this workplace."""

HELD_OUT_HEART = REPO.parent / "shared" / "data" / "second_heart_mmwhs_raw_labels.nii.gz"
"""Subject B of the kit (raw MM-WHS codes, the `mmwhs-raw` table): no bundled checkpoint was
trained on it, so it is where the checkpoint's own quality on an unseen heart is measured."""

# small enough for fast tests, fine enough that the thinnest vessels stay several voxels wide
SMALL_SIZE, SMALL_SPACING = 112, 1.8


def write_nifti(path: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
    """`labels` with `affine` as a NIfTI-1 file at `path` (.nii or .nii.gz); returns `path`."""
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path
