"""Shared fixtures: phantoms made by the project itself, and the real heart from ../shared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from heartvec.cli import main as heartvec_main
from heartvec.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
REAL_HEART = REPO.parent / "shared" / "data" / "whole_heart_mmwhs_labels.nii.gz"

# small enough for fast tests, fine enough that the thinnest vessels stay several voxels wide
SMALL_SIZE, SMALL_SPACING = 112, 1.8


def write_nifti(path: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(labels, affine)
    nib.save(image, path)
    return path


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 112^3 phantom at 1.8 mm (the whole heart in a 200 mm field of view)."""
    labels, affine = make_phantom(7, size=SMALL_SIZE, spacing=SMALL_SPACING)
    return write_nifti(tmp_path_factory.mktemp("phantom") / "small.nii.gz", labels, affine)


@pytest.fixture(scope="session")
def real_heart() -> Path:
    if not REAL_HEART.is_file():
        pytest.skip(f"real heart not found at {REAL_HEART}")
    return REAL_HEART


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `heartvec ARGS...` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        status = heartvec_main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
