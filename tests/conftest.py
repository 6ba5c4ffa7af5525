"""Shared fixtures: phantoms made by the project itself, the real heart from ../shared, and the
command line run in-process. Helpers the tests import live in `heartvec_testing`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# Under pytest-xdist (`make test` runs two workers): each worker, and every process it starts
# (CLI commands, API servers, Celery workers, torchrun), gets its share of the cores. Two workers
# with a thread per core each made the torch tests fight over the cores: the overfit test ran
# 8x slower than alone (OpenMP threads spin waiting for each other).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    from heartvec.resources import available_cpus

    _threads = max(1, available_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)

import pytest

from heartvec.cli import main as heartvec_main
from heartvec.phantom import make_phantom
from heartvec_testing.volumes import (
    HELD_OUT_HEART,
    REAL_HEART,
    SMALL_SIZE,
    SMALL_SPACING,
    write_nifti,
)

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # were torch imported already


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


@pytest.fixture(scope="session")
def held_out_heart() -> Path:
    """Real subject B, which no bundled checkpoint was trained on."""
    if not HELD_OUT_HEART.is_file():
        pytest.skip(f"held-out real heart not found at {HELD_OUT_HEART}")
    return HELD_OUT_HEART


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `heartvec ARGS...` in-process; returns (exit status, stdout, stderr)."""

    def run(*args: str | Path) -> tuple[int, str, str]:
        status = heartvec_main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
