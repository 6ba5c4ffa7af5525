"""Makers of every bad input heartvec must refuse clearly (not NIfTI, truncated, 2-D or 4-D,
non-integer or unknown labels, no foreground, absurd size), each with the words its message
must contain."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])


def blob(shape: tuple[int, ...] = (24, 24, 24)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int16)
    labels[6:18, 6:18, 6:18] = 1
    return labels


def not_nifti(folder: Path) -> Path:
    path = folder / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"patient,label\n1,2\n" * 50))
    return path


def plain_text_nii(folder: Path) -> Path:
    path = folder / "scan.nii"
    path.write_text("this is not an image\n" * 40)
    return path


def truncated_gzip(folder: Path) -> Path:
    whole = folder / "whole.nii.gz"
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).integers(0, 3, (40, 40, 40), dtype=np.int16), AFFINE
        ),
        whole,
    )
    data = whole.read_bytes()
    whole.unlink()
    path = folder / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def two_dimensional(folder: Path) -> Path:
    path = folder / "slice.nii.gz"
    nib.save(nib.Nifti1Image(blob()[:, :, 12], AFFINE), path)
    return path


def four_dimensional(folder: Path) -> Path:
    path = folder / "timeseries.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([blob()] * 3, axis=-1), AFFINE), path)
    return path


def non_integer_labels(folder: Path) -> Path:
    path = folder / "probabilities.nii.gz"
    nib.save(nib.Nifti1Image(blob().astype(np.float32) * 0.5, AFFINE), path)
    return path


def no_foreground(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), dtype=np.uint8), AFFINE), path)
    return path


def unknown_labels(folder: Path) -> Path:
    labels = blob()
    labels[2:5, 2:5, 2:5] = 42
    path = folder / "unknown.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), path)
    return path


def absurd_size(folder: Path) -> Path:
    """A header claiming 30000^3 voxels (a decompression bomb would look like this)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((30000, 30000, 30000))
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    path = folder / "huge.nii"
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 1024)
    return path


def missing_file(folder: Path) -> Path:
    return folder / "does_not_exist.nii.gz"


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not_nifti": (not_nifti, "not a readable NIfTI"),
    "plain_text_nii": (plain_text_nii, "not a readable NIfTI"),
    "truncated_gzip": (truncated_gzip, "truncated or corrupt"),
    "two_dimensional": (two_dimensional, "expected a 3-D volume, got 2-D"),
    "four_dimensional": (four_dimensional, "expected a 3-D volume, got 4-D"),
    "non_integer_labels": (non_integer_labels, "non-integer label value 0.5"),
    "no_foreground": (no_foreground, "no foreground"),
    "unknown_labels": (unknown_labels, "unknown label values [42]"),
    "absurd_size": (absurd_size, "absurd size"),
    "missing_file": (missing_file, "no such file"),
}
