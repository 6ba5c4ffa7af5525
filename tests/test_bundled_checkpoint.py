"""The checkpoint shipped in the package: what `heartvec reconstruct` uses without
`--checkpoint`. Its quality floors sit below what bench/reconstruct.py measured (BENCHMARKS.md),
so a retrained or broken checkpoint that is worse fails here."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from heartvec.labels import CLASS_NAMES
from heartvec.model.checkpoint import load_checkpoint
from heartvec.settings import BUNDLED_CHECKPOINT

CLI = Callable[..., tuple[int, str, str]]

# floors: the measured values minus a margin for other CPUs (measured with the previous bundled
# checkpoint e7d38c6b; the stage-6 file d9d3f377 of 2026-12-07 passes them and measured equal or
# higher in bench/checkpoints.py --tag stage6;
# resolution 128, defaults: 800 refinement steps of 1536 fit points, balanced per class; measured
# 2026-12-07). The earlier defaults fail the phantom's mean and the real heart's mean Dice: 400
# steps of 768 points by area measured 0.923 / 0.80 (the pulmonary veins) / 0.940 / 2.58 mm, 800
# steps of 768 balanced 0.939 / 0.86 / 0.952 / 1.97 mm.
PHANTOM_MEAN_DICE = 0.945  # measured 0.956 on this phantom (seed 7, 112^3 at 1.8 mm)
PHANTOM_MEAN_DICE_LARGE = 0.95  # measured 0.963
THIN_CLASSES = ("superior_vena_cava", "inferior_vena_cava", "pulmonary_veins")
PHANTOM_THIN_DICE = 0.85  # each (issue 23's target); measured 0.96, 0.97, 0.89
REAL_HEART_MEAN_DICE = 0.953  # measured 0.960 (real subject A)
REAL_HEART_MEAN_HD95_MM = 2.2  # measured 1.86 mm
REAL_HEART_MAX_HD95_MM = 8.0  # measured 4.8 mm; 83 mm without dropping stray pieces
# the checkpoint alone on real subject B, which it never trained on (this test's command:
# resolution 128, no refinement): stage 4 (phantoms only) 0.539, stage 5
# 0.621, stage 5 with its 0.003 level offset 0.649 (bf16 and fp32 decoding alike), stage 6 with
# its 0.003 level offset 0.666 (bench/encoder.py --tag stage6_offset)
HELD_OUT_ALONE_MEAN_DICE = 0.60


def test_bundled_checkpoint_is_small_and_complete() -> None:
    assert BUNDLED_CHECKPOINT.is_file(), "the package ships heartvec-small.pt"
    assert BUNDLED_CHECKPOINT.stat().st_size < 25 * 2**20
    state = load_checkpoint(BUNDLED_CHECKPOINT)
    assert state["preset"] == "small" and "optimizer" not in state
    assert list(state["class_names"]) == list(CLASS_NAMES)
    assert all(t.dtype == torch.float16 for t in state["model"].values() if t.is_floating_point())
    assert state["train_config"]["truncation"] == pytest.approx(0.1)
    assert state["normalization"]["scale_mm"] == pytest.approx(100.0)


def test_unseen_phantom_with_the_defaults(small_phantom: Path, tmp_path: Path,
                                          run_cli: CLI) -> None:  # fmt: skip
    out = tmp_path / "out"
    status, stdout, err = run_cli("reconstruct", small_phantom, "--out", out, "--resolution", "128")
    assert status == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["checkpoint"] == str(BUNDLED_CHECKPOINT)
    assert report["model"]["preset"] == "small"
    offsets = report["model"]["level_offset"]  # each class's, in the head bias (0: none)
    assert set(offsets) == set(CLASS_NAMES)
    assert json.loads(stdout.strip().splitlines()[-1])["out"] == str(out)
    assert report["summary"]["mean_dice"] >= PHANTOM_MEAN_DICE
    assert report["summary"]["mean_dice_large"] >= PHANTOM_MEAN_DICE_LARGE
    thin = {name: report["classes"][name]["dice"] for name in THIN_CLASSES}
    assert min(thin.values()) >= PHANTOM_THIN_DICE, thin
    assert len(list((out / "meshes").glob("*.ply"))) == 10


def test_real_heart(real_heart: Path, tmp_path: Path, run_cli: CLI) -> None:
    out = tmp_path / "out"
    status, _, err = run_cli("reconstruct", real_heart, "--out", out, "--labels", "mmwhs",
                             "--resolution", "128")  # fmt: skip
    assert status == 0, err
    report = json.loads((out / "report.json").read_text())
    assert set(report["classes"]) >= {"left_ventricle", "aorta", "pulmonary_artery"}
    assert report["summary"]["mean_dice"] >= REAL_HEART_MEAN_DICE
    assert report["summary"]["mean_hd95_mm"] <= REAL_HEART_MEAN_HD95_MM
    # stray pieces far from the heart are dropped (with them the aorta's HD95 was 83 mm)
    assert report["grid"]["pieces_dropped"]
    assert report["summary"]["max_hd95_mm"] <= REAL_HEART_MAX_HD95_MM


def test_the_checkpoint_alone_on_a_heart_it_never_saw(held_out_heart: Path, tmp_path: Path,
                                                     run_cli: CLI) -> None:  # fmt: skip
    """The shape code itself, without per-input fitting: a checkpoint that forgot real anatomy
    (the phantom-only stage 4 scored 0.539 here) fails."""
    out = tmp_path / "out"
    status, _, err = run_cli("reconstruct", held_out_heart, "--out", out, "--labels", "mmwhs-raw",
                             "--resolution", "128", "--refine-steps", "0")  # fmt: skip
    assert status == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["refinement"] is None  # the encoder's latents as they are
    assert set(report["classes"]) == set(CLASS_NAMES[:7])  # the seven MM-WHS structures
    assert report["summary"]["mean_dice"] >= HELD_OUT_ALONE_MEAN_DICE
    # no class is lost outright: each is found where the input has it
    assert min(c["dice"] for c in report["classes"].values()) >= 0.3


def test_band_decoding_matches_the_dense_grid(small_phantom: Path) -> None:
    """With the bundled model (a learned SDF, flatter than a distance), the narrow band gives
    the dense grid's labels (Dice >= 0.99 per class) from a fraction of its points."""
    import numpy as np

    from heartvec.labels import load_label_table
    from heartvec.reconstruction.decoding import decode_latents
    from heartvec.reconstruction.encoding import (
        checkpoint_normalization,
        encoder_inputs,
        load_model,
    )
    from heartvec.surfaces import class_surfaces
    from heartvec.volume import load_label_volume

    volume = load_label_volume(small_phantom, load_label_table("default"))
    surfaces = class_surfaces(volume)
    loaded = load_model(BUNDLED_CHECKPOINT)
    normalization = checkpoint_normalization(loaded.state, surfaces)
    points, labels = encoder_inputs(loaded.model, surfaces, normalization, np.random.default_rng(0))
    with torch.no_grad():
        latents = loaded.model.encode(points, labels)
    grids = {
        dense: decode_latents(loaded.model, latents, surfaces, normalization, 97, 0.1, dense=dense)
        for dense in (True, False)
    }

    def classes(values: np.ndarray) -> np.ndarray:
        best = np.where(values < 0, values, np.inf).argmin(-1) + 1
        return np.where((values < 0).any(-1), best, 0)

    dense, band = classes(grids[True].values), classes(grids[False].values)
    assert grids[False].evaluated < 0.5 * grids[True].evaluated
    for c in range(1, len(CLASS_NAMES) + 1):
        overlap = 2 * np.sum((dense == c) & (band == c)) / (np.sum(dense == c) + np.sum(band == c))
        assert overlap >= 0.99, CLASS_NAMES[c - 1]
