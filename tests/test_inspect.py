"""`heartvec inspect` and the top-level command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CLI = Callable[..., tuple[int, str, str]]


def test_inspect_phantom(small_phantom: Path, run_cli: CLI) -> None:
    status, out, _ = run_cli("inspect", small_phantom)
    assert status == 0
    assert "shape        112 x 112 x 112 voxels" in out
    assert "spacing      1.8 x 1.8 x 1.8 mm" in out
    assert "orientation  RAS" in out
    assert "left_ventricle" in out and "pulmonary_veins" in out


def test_inspect_json_counts_every_voxel(small_phantom: Path, run_cli: CLI) -> None:
    status, out, _ = run_cli("inspect", small_phantom, "--json")
    report = json.loads(out)
    assert status == 0
    assert sum(row["voxels"] for row in report["labels"]) == 112**3
    assert [row["value"] for row in report["labels"]] == list(range(11))


@pytest.mark.slow
def test_inspect_real_heart(real_heart: Path, run_cli: CLI) -> None:
    status, out, _ = run_cli("inspect", real_heart, "--labels", "mmwhs", "--json")
    report = json.loads(out)
    assert status == 0
    assert report["shape"] == [512, 512, 248] and report["orientation"] == "LAS"
    assert report["spacing_mm"] == pytest.approx([0.488281, 0.488281, 0.625], abs=1e-5)
    classes = {row["value"]: row["class"] for row in report["labels"]}
    assert classes[1] == "lv_myocardium" and classes[3] == "left_ventricle"


def test_top_level_help_and_unknown_subcommand(run_cli: CLI) -> None:
    status, out, _ = run_cli("--help")
    assert status == 0 and "prepare" in out and "phantom" in out
    status, _, err = run_cli("reticulate")
    assert status == 2 and "unknown subcommand 'reticulate'" in err


def test_installed_entry_point_reports_bad_input_with_exit_2(tmp_path: Path) -> None:
    heartvec = Path(sys.executable).parent / "heartvec"
    result = subprocess.run(
        [heartvec, "inspect", tmp_path / "missing.nii.gz"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"heartvec: error: {tmp_path / 'missing.nii.gz'}: no such file"
