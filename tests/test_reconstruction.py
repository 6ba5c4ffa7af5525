"""`heartvec reconstruct` end to end with a tiny checkpoint trained here on one phantom."""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import trimesh

from heartvec.errors import InputError
from heartvec.labels import load_label_table
from heartvec.model.checkpoint import load_checkpoint
from heartvec.reconstruction import defaults
from heartvec.reconstruction.export import write_label_volume
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec_testing.volumes import write_nifti

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(phantom, checkpoint): tiny trained for 400 steps on that phantom alone."""
    from heartvec.cli import main

    root = tmp_path_factory.mktemp("reconstruct")
    assert main(["phantom", str(root), "--count", "1", "--seed", "3", "--size", "96",
                 "--spacing", "2.2"]) == 0  # fmt: skip
    phantom = root / "phantom_s0003.nii.gz"
    points = ["--surface-points", "20000", "--vol-points", "20000", "--near-points", "20000"]
    assert main(["prepare", str(phantom), "--out", str(root / "data"), *points]) == 0
    (root / "data" / "train.csv").write_text("file\n" + "phantom_s0003.npz\n" * 16)
    (root / "data" / "val.csv").write_text("file\nphantom_s0003.npz\n")
    config = root / "config.yaml"
    config.write_text(  # one checkpoint and curve at the end, not after each short epoch
        "preset: tiny\ntrain: {learning_rate: 3.0e-3, workers: 0, val_every: 0,\n"
        "        checkpoint_every_s: 600}\n"
    )
    run = root / "run"
    assert main(["train", "--data", str(root / "data"), "--out", str(run), "--config", str(config),
                 "--epochs", "50"]) == 0  # fmt: skip
    return phantom, run / "checkpoint-last.pt"


def test_outputs_follow_the_contract(trained: tuple[Path, Path], tmp_path: Path) -> None:
    phantom, checkpoint = trained
    out = tmp_path / "out"
    stages = []
    report = reconstruct(
        phantom, out, load_label_table("default"), checkpoint,
        ReconstructSettings(resolution=64), progress=lambda stage, _: stages.append(stage),
    )  # fmt: skip
    assert stages[0] == "load" and stages[-1] == "done"
    for name in (
        "heart.glb",
        "reconstruction.nii.gz",
        "latent.npy",
        "shape_code.npz",
        "report.json",
        "preview.png",
    ):
        assert (out / name).stat().st_size > 0, name
    # the input's outlines on three slices, in world mm: the LV outline lies on the input's LV
    slices = json.loads((out / "slices.json").read_text())["slices"]
    assert [s["axis"] for s in slices] == [0, 1, 2]
    lv_points = np.array([p for s in slices for line in s["classes"]["1"] for p in line])
    inverse = np.linalg.inv(nib.load(phantom).affine)
    ijk = np.rint(nib.affines.apply_affine(inverse, lv_points)).astype(int)
    near_lv = [(np.asarray(nib.load(phantom).dataobj)[tuple(v)] == 1) for v in ijk]
    assert np.mean(near_lv) > 0.4  # outlines run along the boundary: about half inside
    source, result = nib.load(phantom), nib.load(out / "reconstruction.nii.gz")
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine)
    assert set(np.unique(np.asarray(result.dataobj))) <= set(range(11))
    state = load_checkpoint(checkpoint)
    latent = np.load(out / "latent.npy")
    config = state["model_config"]
    assert latent.shape == (config["num_latents"], config["latent_dim"])
    meshes = sorted(p.name for p in (out / "meshes").glob("*.ply"))
    assert "1_left_ventricle.ply" in meshes and "6_aorta.ply" in meshes
    scene = trimesh.load(out / "heart.glb")
    assert len(scene.geometry) == len(meshes)
    saved = json.loads((out / "report.json").read_text())
    assert saved["classes"]["left_ventricle"]["dice"] > 0.8
    assert saved["summary"]["mean_dice_large"] > 0.6
    assert set(saved["timings"]) >= {"load_s", "encode_s", "decode_s", "meshes_s", "total_s"}
    assert saved["grid"]["min_piece"] == defaults.MIN_PIECE
    assert set(saved["grid"]["pieces_dropped"]) <= set(saved["classes"])
    assert saved["model"]["preset"] == "tiny" and len(saved["model"]["checkpoint_sha256"]) == 64
    assert set(saved["model"]["level_offset"].values()) == {0.0}  # a training checkpoint
    assert report["summary"] == saved["summary"]
    # meshes are in world millimetres on the input: the LV mesh sits on the input's LV
    lv = trimesh.load(out / "meshes" / "1_left_ventricle.ply")
    labels = np.asarray(source.dataobj)
    lv_voxels = np.argwhere(labels == 1)
    lv_centre = nib.affines.apply_affine(source.affine, lv_voxels.mean(axis=0))
    assert np.linalg.norm(lv.vertices.mean(axis=0) - lv_centre) < 6.0


def test_the_shape_code_decodes_to_the_reconstruction(
    trained: tuple[Path, Path], tmp_path: Path, run_cli: CLI
) -> None:
    """`heartvec decode shape_code.npz` draws the reconstruction's label volume, meshes and GLB
    again without the input (each label Dice >= 0.99; on one machine: identical), at another
    resolution too; a code is refused by another checkpoint and a file that is no code."""
    phantom, checkpoint = trained
    out, again = tmp_path / "out", tmp_path / "again"
    args = ["--checkpoint", checkpoint, "--resolution", "48"]
    refined = ["--refine-steps", "10", "--refine-points", "192", "--frame-search", "6"]
    status, printed, _ = run_cli("reconstruct", phantom, "--out", out, *args, *refined)
    assert status == 0
    code = np.load(out / "shape_code.npz")
    state = load_checkpoint(checkpoint)
    assert code["latents"].shape == (state["model_config"]["num_latents"],
                                     state["model_config"]["latent_dim"])  # fmt: skip
    assert code["context"].shape[1] == state["model_config"]["width"]  # refined: the context
    np.testing.assert_array_equal(code["encoded"], np.load(out / "latent.npy"))
    np.testing.assert_allclose(code["affine"], nib.load(phantom).affine)
    report = json.loads((out / "report.json").read_text())
    assert str(code["checkpoint_sha256"]) == report["model"]["checkpoint_sha256"]
    assert report["refinement"]["points_per_step"] == 192
    assert report["frame_search"]["frames"] == 6  # the code keeps the frame the search chose
    summary = json.loads(printed.strip().splitlines()[-1])  # and the command's last line says it
    assert summary["frame_shift_mm"] == report["frame_search"]["shift_mm"]
    assert summary["frame_scale_factor"] == report["frame_search"]["scale_factor"]
    np.testing.assert_allclose(code["center"], report["normalization"]["center_mm"])
    assert float(code["scale"]) == report["normalization"]["scale_mm"]

    status, _, err = run_cli("decode", out / "shape_code.npz", "--out", again, *args[:2])
    assert status == 0, err
    before = np.asarray(nib.load(out / "reconstruction.nii.gz").dataobj)
    after = nib.load(again / "reconstruction.nii.gz")
    np.testing.assert_allclose(after.affine, nib.load(phantom).affine)
    for value in np.unique(before[before > 0]):
        both = ((before == value) & (np.asarray(after.dataobj) == value)).sum()
        dice = 2 * both / ((before == value).sum() + (np.asarray(after.dataobj) == value).sum())
        assert dice >= 0.99, (value, dice)
    assert sorted(p.name for p in (again / "meshes").iterdir()) == sorted(
        p.name for p in (out / "meshes").iterdir()
    )
    assert len(trimesh.load(again / "heart.glb").geometry) == len(list((out / "meshes").iterdir()))

    coarse = tmp_path / "coarse"
    assert run_cli("decode", out / "shape_code.npz", "--out", coarse, *args[:2],
                   "--resolution", "32")[0] == 0  # fmt: skip
    assert nib.load(coarse / "reconstruction.nii.gz").shape == before.shape
    other = tmp_path / "other.pt"
    assert run_cli("export-checkpoint", checkpoint, other)[0] == 0  # other weights, other hash
    status, _, err = run_cli("decode", out / "shape_code.npz", "--out", tmp_path / "x",
                             "--checkpoint", other)  # fmt: skip
    assert status == 2 and "made by the checkpoint of sha256" in err
    (tmp_path / "not-a-code.npz").write_text("hello")
    status, _, err = run_cli("decode", tmp_path / "not-a-code.npz", "--out", tmp_path / "y")
    assert status == 2 and "not a shape code" in err


def test_a_scan_mostly_empty_reconstructs_as_its_hearts_crop(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """A CT scan is mostly not heart: the work is done where the heart and its decoding cube
    are, and the outputs are those of the heart's crop, on the scan's own grid."""
    phantom, checkpoint = trained
    image = nib.load(phantom)
    labels = np.asarray(image.dataobj)
    scan = np.zeros((160, 150, 170), dtype=labels.dtype)
    offset = np.array([30, 20, 45])
    scan[tuple(slice(o, o + n) for o, n in zip(offset, labels.shape, strict=True))] = labels
    affine = image.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ offset  # the heart keeps its world position
    scan_path = write_nifti(tmp_path / "scan.nii.gz", scan, affine)
    settings = ReconstructSettings(resolution=48, refine=RefineSettings(steps=5))
    table = load_label_table("default")
    crop = reconstruct(phantom, tmp_path / "crop", table, checkpoint, settings)
    whole = reconstruct(scan_path, tmp_path / "scan", table, checkpoint, settings)
    assert whole["classes"] == crop["classes"]
    written = nib.load(tmp_path / "scan" / "reconstruction.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    everything = np.asarray(written.dataobj)
    inside = tuple(slice(o, o + n) for o, n in zip(offset, labels.shape, strict=True))
    expected = np.asarray(nib.load(tmp_path / "crop" / "reconstruction.nii.gz").dataobj)
    np.testing.assert_array_equal(everything[inside], expected)
    everything[inside] = 0
    assert not everything.any()


def test_flipped_input_reconstructs_on_its_own_grid(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    phantom, checkpoint = trained
    image = nib.load(phantom)
    flipped_labels = np.flip(np.asarray(image.dataobj), axis=1).copy()
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = image.shape[1] - 1
    flipped = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(flipped_labels, image.affine @ flip), flipped)
    report = reconstruct(flipped, tmp_path / "out", load_label_table("default"), checkpoint,
                         ReconstructSettings(resolution=64))  # fmt: skip
    assert report["classes"]["left_ventricle"]["dice"] > 0.8  # same anatomy in the world


def test_checkpoint_classes_must_fit_the_table(
    trained: tuple[Path, Path], tmp_path: Path, run_cli: CLI
) -> None:
    phantom, checkpoint = trained
    state = torch.load(checkpoint, weights_only=True)
    state["class_names"] = ["spleen", *state["class_names"][1:]]
    foreign = tmp_path / "foreign.pt"
    torch.save(state, foreign)
    status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path / "out",
                             "--checkpoint", foreign)  # fmt: skip
    assert status == 2
    assert "checkpoint classes ['spleen'" in err and "do not fit the volume's classes" in err


def test_bad_input_and_missing_checkpoint(trained: tuple[Path, Path], tmp_path: Path,
                                          run_cli: CLI) -> None:  # fmt: skip
    phantom, checkpoint = trained
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    status, _, err = run_cli(
        "reconstruct", text, "--out", tmp_path / "a", "--checkpoint", checkpoint
    )
    assert status == 2 and f"heartvec: error: {text}: not a readable NIfTI" in err
    status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path / "b",
                             "--checkpoint", tmp_path / "none.pt")  # fmt: skip
    assert status == 2 and "no such checkpoint file" in err
    for fraction in ("1", "-0.1", "nan"):
        status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path / "c",
                                 "--checkpoint", checkpoint, "--min-piece", fraction)  # fmt: skip
        assert status == 2 and "heartvec: error: --min-piece: " in err
        assert "need 0 <= fraction < 1" in err
    for points in ("95", "8193"):
        status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path / "d",
                                 "--checkpoint", checkpoint, "--refine-points", points)  # fmt: skip
        assert status == 2 and "heartvec: error: --refine-points" in err and points in err
    for frames in ("-1", "65"):
        status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path / "e",
                                 "--checkpoint", checkpoint, "--frame-search", frames)  # fmt: skip
        assert status == 2 and "heartvec: error: --frame-search" in err and frames in err


LEARNING_RATES = {"context": 3e-2, "latents": 8e-2}  # each target's best (bench/refinement.py)


@pytest.mark.parametrize(
    ("target", "sign_weight", "precision"),
    [
        ("context", defaults.REFINE_SIGN_WEIGHT, "fp32"),
        ("context", defaults.REFINE_SIGN_WEIGHT, "bf16"),
        ("context", 0.0, "fp32"),
        ("latents", 0.0, "fp32"),
    ],
)
def test_refinement_fits_an_unseen_heart(
    trained: tuple[Path, Path], tmp_path: Path, target: str, sign_weight: float, precision: str
) -> None:
    """The checkpoint knows one phantom; refining (the decoder's context, or the latent set;
    with the default sign term in the fit loss or without; its steps in fp32 or bf16) on
    another one (seed 4, other chamber sizes and positions) fits it better on held-out points
    and in Dice. `latent.npy` is the refined latent set, or the encoded one when the context
    was refined."""
    from heartvec.cli import main

    _, checkpoint = trained
    assert main(["phantom", str(tmp_path), "--count", "1", "--seed", "4", "--size", "96",
                 "--spacing", "2.2"]) == 0  # fmt: skip
    unseen = tmp_path / "phantom_s0004.nii.gz"
    table = load_label_table("default")
    no_refinement = ReconstructSettings(resolution=48, refine=RefineSettings(steps=0))
    plain = reconstruct(unseen, tmp_path / "plain", table, checkpoint, no_refinement)
    refine = RefineSettings(steps=40, target=target, learning_rate=LEARNING_RATES[target],
                            sign_weight=sign_weight, precision=precision)  # fmt: skip
    report = reconstruct(unseen, tmp_path / "refined", table, checkpoint,
                         ReconstructSettings(resolution=48, refine=refine))  # fmt: skip
    refinement = report["refinement"]
    assert refinement["steps"] == 40 and refinement["target"] == target
    assert refinement["sign_weight"] == sign_weight
    assert refinement["class_balance"] == defaults.REFINE_CLASS_BALANCE
    assert refinement["target_points"] == defaults.REFINE_TARGET_POINTS
    assert refinement["near_share"] == defaults.REFINE_NEAR_SHARE
    assert refinement["precision"] == precision
    assert refinement["loss_last"] < refinement["loss_first"]
    assert set(refinement["held_out_iou_after"]) == set(refinement["held_out_iou_before"])
    # at the held-out near-surface and volume points, on a 2-core EPYC: 0.124 -> 0.181
    # (context, sign term), 0.190 (context, L1), 0.236 (latents); the tiny model trained by
    # the fixture differs in the last bits from CPU to CPU
    assert refinement["mean_held_out_iou_after"] > refinement["mean_held_out_iou_before"] + 0.02
    assert report["summary"]["mean_dice"] > plain["summary"]["mean_dice"]
    assert plain["refinement"] is None
    encoded = np.load(tmp_path / "plain" / "latent.npy")
    written = np.load(tmp_path / "refined" / "latent.npy")
    if target == "context":
        np.testing.assert_array_equal(written, encoded)
    else:
        assert np.abs(written - encoded).max() > 1e-3


def test_refinement_step_size_follows_a_cosine_to_its_final_fraction() -> None:
    from heartvec.reconstruction.refine import cosine_factor

    factors = [cosine_factor(step, 400, 0.1) for step in range(400)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert factors[200] == pytest.approx(0.55, abs=0.01)  # halfway: halfway down
    assert all(a > b for a, b in itertools.pairwise(factors))
    assert {cosine_factor(step, 400, 1.0) for step in range(400)} == {1.0}  # constant
    assert cosine_factor(0, 1, 0.1) == 1.0  # one step: the step size given


def test_refinement_rejects_an_unknown_target() -> None:
    with pytest.raises(ValueError, match="refinement target 'weights'"):
        RefineSettings(target="weights")
    for precision in ("fp16", "auto"):
        with pytest.raises(ValueError, match=f"refinement precision '{precision}'"):
            RefineSettings(precision=precision)


@pytest.mark.parametrize(
    ("precision", "refinement"), [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16")]
)
def test_the_precision_option_sets_the_refinements_when_asked(
    trained: tuple[Path, Path], tmp_path: Path, run_cli: CLI, precision: str, refinement: str
) -> None:
    """`--precision bf16` runs the refinement's steps in bf16 too; 'auto' (bf16 decoding where
    the hardware has it) keeps them fp32."""
    phantom, checkpoint = trained
    status, _, err = run_cli("reconstruct", phantom, "--out", tmp_path, "--checkpoint", checkpoint,
                             "--resolution", "32", "--refine-steps", "3", "--refine-points", "96",
                             "--precision", precision)  # fmt: skip
    assert status == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["refinement"]["precision"] == refinement
    if precision != "auto":
        assert report["precision"] == precision  # the decoding's


def test_exported_checkpoint_is_smaller_and_reconstructs_alike(
    trained: tuple[Path, Path], tmp_path: Path, run_cli: CLI
) -> None:
    phantom, checkpoint = trained
    exported = tmp_path / "exported.pt"
    assert run_cli("export-checkpoint", checkpoint, exported)[0] == 0
    assert exported.stat().st_size < 0.4 * checkpoint.stat().st_size
    state = load_checkpoint(exported)
    assert "optimizer" not in state and state["model_config"]["width"] == 64
    table = load_label_table("default")
    # without refinement: its hundreds of steps amplify float16's last bits in the tiny model's thin
    # veins (0.022 Dice apart at resolution 48); the weights are what the export changes
    settings = ReconstructSettings(resolution=48, refine=RefineSettings(steps=0))
    full = reconstruct(phantom, tmp_path / "full", table, checkpoint, settings)
    half = reconstruct(phantom, tmp_path / "half", table, exported, settings)
    for name, row in full["classes"].items():
        assert abs(row["dice"] - half["classes"][name]["dice"]) < 0.02, name


def test_export_sets_the_frame_scale(
    trained: tuple[Path, Path], tmp_path: Path, run_cli: CLI
) -> None:
    """`export-checkpoint --scale-mm`: reconstruction encodes in the frame it sets, the weights
    stay, the training data's scale is kept over re-exports; bad scales are refused."""
    from heartvec.model.checkpoint import save_checkpoint

    phantom, checkpoint = trained
    source, tighter, again = (tmp_path / f"{n}.pt" for n in ("source", "tighter", "again"))
    assert run_cli("export-checkpoint", checkpoint, source, "--float32")[0] == 0
    assert run_cli("export-checkpoint", source, tighter, "--scale-mm", "90")[0] == 0
    assert run_cli("export-checkpoint", tighter, again, "--scale-mm", "80")[0] == 0
    before, after = load_checkpoint(source), load_checkpoint(tighter)
    assert before["normalization"] == {"scale_mm": 100.0}
    assert after["normalization"] == {"scale_mm": 90.0, "trained_scale_mm": 100.0}
    assert load_checkpoint(again)["normalization"] == {"scale_mm": 80.0, "trained_scale_mm": 100.0}
    torch.testing.assert_close(after["model"]["head.1.bias"], before["model"]["head.1.bias"].half())
    settings = ReconstructSettings(resolution=48, refine=RefineSettings(steps=0))
    table = load_label_table("default")
    plain = reconstruct(phantom, tmp_path / "plain", table, source, settings)
    framed = reconstruct(phantom, tmp_path / "framed", table, tighter, settings)
    assert plain["normalization"]["scale_mm"] == 100.0
    assert framed["normalization"]["scale_mm"] == 90.0
    assert framed["normalization"]["center_mm"] == plain["normalization"]["center_mm"]
    assert framed["summary"]["mean_dice"] != plain["summary"]["mean_dice"]  # another encoding
    for value in ("0", "-5", "nan", "inf"):
        status, _, err = run_cli("export-checkpoint", source, tmp_path / "bad.pt",
                                 f"--scale-mm={value}")  # fmt: skip
        assert status == 2 and "--scale-mm" in err and "positive" in err, (value, err)
    fitted = tmp_path / "fitted.pt"
    save_checkpoint(fitted, {**before, "normalization": {"scale_mm": None}})
    status, _, err = run_cli("export-checkpoint", fitted, tmp_path / "bad.pt", "--scale-mm", "90")
    assert status == 2 and "no fixed scale" in err
    assert not (tmp_path / "bad.pt").exists()


def test_bf16_decoding_matches_fp32(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """Decoding under bf16 autocast (the default on GPUs and CPUs with native bf16) gives the
    fp32 result within 0.02 Dice per class; the report says which precision ran. (It held at
    0.01 on an AVX512-BF16 CPU; on an AVX2 CPU, where bf16 is emulated, the tiny model's
    myocardium, two voxels thick at resolution 64, differed by 0.011, dense grid or band
    alike.)"""
    phantom, checkpoint = trained
    reports = {}
    for precision in ("fp32", "bf16"):
        settings = ReconstructSettings(
            resolution=64, refine=RefineSettings(steps=0), precision=precision
        )
        table = load_label_table("default")
        reports[precision] = reconstruct(phantom, tmp_path / precision, table, checkpoint, settings)
    assert reports["fp32"]["precision"] == "fp32" and reports["bf16"]["precision"] == "bf16"
    for name, fp32 in reports["fp32"]["classes"].items():
        assert abs(reports["bf16"]["classes"][name]["dice"] - fp32["dice"]) <= 0.02, name
    with pytest.raises(InputError, match="precision"):
        reconstruct(phantom, tmp_path / "x", load_label_table("default"), checkpoint,
                    ReconstructSettings(resolution=64, precision="fp8"))  # fmt: skip


def test_refinement_adam_is_torch_adam() -> None:
    """refine_steps.Adam (kept out of torch.optim for its import time) takes torch.optim.Adam's
    steps on a badly scaled quadratic."""
    from heartvec.reconstruction.refine_steps import Adam

    scale = torch.tensor([[1.0, 30.0, 0.01]])
    ours = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    optimizers = (Adam(ours, lr=6e-2), torch.optim.Adam([theirs], lr=6e-2))
    for _ in range(50):
        for parameter, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            ((scale * parameter) ** 2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(ours, theirs)
    assert not torch.equal(ours.detach(), torch.tensor([[1.0, -2.0, 3.0]]))


@pytest.mark.parametrize(("table_name", "dtype"), [("default", np.uint8), ("mmwhs-raw", np.int16)])
def test_label_volume_file_holds_the_tables_values(
    tmp_path: Path, table_name: str, dtype: type
) -> None:
    """Class indices become the table's label values, voxel for voxel, in the smallest type
    that holds all of the table's values (MM-WHS raw codes reach 850); the same volume gives
    the same bytes whenever it is written."""
    table = load_label_table(table_name)
    rng = np.random.default_rng(0)
    classes = rng.choice([0, *sorted(set(table.class_of_value.values()))[:4]], size=(9, 8, 7))
    classes = classes.astype(np.uint8)
    affine = np.diag([0.5, 0.6, 0.7, 1.0])
    write_label_volume(classes, affine, table, tmp_path / "labels.nii.gz")
    written = nib.load(tmp_path / "labels.nii.gz")
    values = np.asarray(written.dataobj)
    assert values.dtype == dtype
    np.testing.assert_allclose(written.affine, affine)
    expected = np.zeros(classes.shape, dtype=np.int64)
    for class_index in np.unique(classes[classes > 0]):
        expected[classes == class_index] = table.value_of_class(int(class_index))
    np.testing.assert_array_equal(values, expected)
    assert (values > 0).any() and len(np.unique(values)) == 5
    write_label_volume(np.zeros_like(classes), affine, table, tmp_path / "empty.nii.gz")
    assert not np.asarray(nib.load(tmp_path / "empty.nii.gz").dataobj).any()
    # reproducible bytes: the gzip header carries no time of writing
    assert (tmp_path / "labels.nii.gz").read_bytes()[4:8] == bytes(4)


def test_dense_decoding_on_the_device_gives_the_grids_values() -> None:
    """`decode_dense` (points made on the model's device, chunks copied into one array) gives
    what the decoder gives at `decode_grid`'s dense points, in the same order, whatever the
    chunk size."""
    from heartvec.model.config import MODEL_PRESETS
    from heartvec.model.vecset import VecSetAutoencoder
    from heartvec.reconstruction.decoding import decode_dense
    from heartvec.reconstruction.grid import decode_grid, negative_extent

    torch.manual_seed(0)
    model = VecSetAutoencoder(MODEL_PRESETS["tiny"]).eval()
    context = torch.randn(1, model.config.num_latents, model.config.width)
    low, high = np.array([-0.6, -0.5, -0.7]), np.array([0.5, 0.7, 0.4])

    def sdf_at(points: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            queries = torch.from_numpy(points.astype(np.float32))[None]
            return model.decode(context, queries)[0].numpy()

    reference = decode_grid(sdf_at, low, high, 21, dense=True, chunk=4096).values
    for chunk in (1000, 21**3):
        values = decode_dense(model, context, low, high, 21, chunk)
        assert values.shape == (21, 21, 21, model.config.num_classes)
        assert values.dtype == torch.float32
        np.testing.assert_allclose(values.numpy(), reference, atol=1e-5)
    assert np.ptp(reference) > 0.01  # a field that varies, so the order is tested
    # each class's extent along each axis, as the GPU path computes it where the values are
    shifted = torch.from_numpy(reference - np.quantile(reference, 0.01, axis=(0, 1, 2)))
    extent = negative_extent(shifted)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        np.testing.assert_array_equal(extent[axis], (shifted.numpy() < 0).any(axis=other))
    assert 0 < extent[0].sum() < extent[0].size


def test_host_pool_gives_the_inline_result(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a host pool of two spawned processes (a GPU machine's many cores run the classes'
    marching cubes and stray pieces, the refinement's distances and the preview there) the
    outputs are those of the inline run, byte for byte; a pool that was shut down under a job
    leaves it to run inline."""
    from heartvec.reconstruction import hostwork
    from heartvec.reconstruction.contours import preview_slices
    from heartvec.reconstruction.encoding import load_model

    phantom, checkpoint = trained
    table = load_label_table("default")
    settings = ReconstructSettings(resolution=48, refine=RefineSettings(steps=10), min_piece=0.05)
    model = load_model(checkpoint)
    reports = {}
    for workers in ("0", "2"):
        monkeypatch.setenv(hostwork.WORKERS_VARIABLE, workers)
        try:
            pool = hostwork.host_pool()
            assert (pool is None) == (workers == "0")
            reports[workers] = reconstruct(phantom, tmp_path / workers, table, model, settings)
        finally:
            hostwork.shutdown_host_pool()
    assert hostwork.running_host_pool() is None  # none is started by the pipeline itself
    inline, pooled = reports["0"], reports["2"]
    assert pooled["classes"] == inline["classes"]
    assert pooled["refinement"]["held_out_iou_after"] == inline["refinement"]["held_out_iou_after"]
    assert pooled["grid"]["pieces_dropped"] == inline["grid"]["pieces_dropped"]
    meshes = sorted(p.relative_to(tmp_path / "0") for p in (tmp_path / "0" / "meshes").iterdir())
    assert len(meshes) >= 8
    for name in ("heart.glb", "reconstruction.nii.gz", "latent.npy", *meshes):
        assert (tmp_path / "2" / name).read_bytes() == (tmp_path / "0" / name).read_bytes(), name
    assert (tmp_path / "2" / "preview.png").stat().st_size > 10_000

    monkeypatch.setenv(hostwork.WORKERS_VARIABLE, "1")
    pool = hostwork.host_pool()
    assert pool is not None
    hostwork.shutdown_host_pool()
    late = hostwork.Deferred(preview_slices, (np.ones((3, 3, 3)), np.zeros((3, 3, 3))), pool)
    assert late.future is None and late.result()["axis 0"][0].shape == (3, 3)
    assert hostwork.host_pool() is not pool  # a new one
    hostwork.shutdown_host_pool()
    monkeypatch.setenv(hostwork.WORKERS_VARIABLE, "two")
    assert hostwork.host_workers() == 0


@pytest.mark.parametrize("target", ["context", "latents"])
def test_refinement_steps_on_device_tensors_are_the_eager_steps(
    trained: tuple[Path, Path], target: str
) -> None:
    """The step whose state lives on the device (what a GPU captures as a CUDA graph and
    replays) takes the eager loop's steps: the same draws, Adam update and step sizes (a cosine
    here), so the same refined tensor and losses, up to float rounding."""
    from heartvec.reconstruction.encoding import (
        checkpoint_normalization,
        encoder_inputs,
        load_model,
    )
    from heartvec.reconstruction.refine import refine_latents, tensors
    from heartvec.reconstruction.refine_steps import fit_loss
    from heartvec.reconstruction.refine_targets import RefinementTargets
    from heartvec.surfaces import class_surfaces
    from heartvec.volume import load_label_volume

    phantom, checkpoint = trained
    loaded = load_model(checkpoint)
    volume = load_label_volume(phantom, load_label_table("default"))
    surfaces = class_surfaces(volume)
    normalization = checkpoint_normalization(loaded.state, surfaces)
    points, labels = encoder_inputs(loaded.model, surfaces, normalization, np.random.default_rng(0))
    with torch.no_grad():
        latents = loaded.model.encode(points, labels)
    low, high = normalization.bounds(surfaces)
    targets = RefinementTargets(volume, surfaces, normalization, low, high, 2048, 7)

    results = {}
    for mode in ("eager", "tensor"):
        refine = RefineSettings(steps=12, learning_rate=LEARNING_RATES[target], target=target,
                                final_lr=0.2, step_mode=mode, precision="fp32")  # fmt: skip
        results[mode] = refine_latents(
            loaded.model, latents, volume, surfaces, normalization, 0.1,
            np.random.default_rng(1), refine, targets,
        )  # fmt: skip
    (eager_latents, eager_context, eager), (latents_t, context_t, tensor) = results.values()
    assert eager["step_mode"] == "eager" and tensor["step_mode"] == "tensor"
    # up to rounding, measured against how far the 12 steps moved each tensor: Adam divides by
    # the root of the squared gradients' average, so rounding in the first steps grows (on one
    # 2-core CPU with one thread, 1.3e-4 on latents the steps moved by 0.52: 0.03%), while a
    # wrong step or step size differs by a good part of a step
    with torch.no_grad():
        start = {"latents": latents, "context": loaded.model.process(latents)}
    refined = {"latents": (eager_latents, latents_t), "context": (eager_context, context_t)}
    for name, (eager_value, tensor_value) in refined.items():
        moved = (eager_value - start[name]).abs().max().item()
        torch.testing.assert_close(
            tensor_value,
            eager_value,
            rtol=0,
            atol=max(1e-5, 1e-3 * moved),
            msg=lambda m, name=name: f"{name}: {m}",
        )
    assert tensor["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-5)
    assert tensor["loss_last"] == pytest.approx(eager["loss_last"], rel=1e-4)
    # the steps fit: the loss on all the fit points (a step's loss is on its own draw) falls
    fit = tensors(targets.result().fit, torch.device("cpu"))
    with torch.no_grad():
        before, _ = fit_loss(loaded.model, start["context"], fit, 0.1, 30.0)
        after, _ = fit_loss(loaded.model, eager_context, fit, 0.1, 30.0)
    assert after < before, (before, after)
    refined = eager_context if target == "context" else eager_latents
    unrefined = loaded.model.process(latents) if target == "context" else latents
    assert (refined - unrefined).abs().max() > 1e-3


def test_the_label_volume_is_written_as_standard_nifti(tmp_path: Path) -> None:
    """Written with ISA-L's deflate: any gzip reader and nibabel read the same labels back."""
    classes = np.zeros((40, 30, 20), dtype=np.uint8)
    table = load_label_table("mmwhs-raw")
    aorta, ventricle = table.class_of_value[820], table.class_of_value[500]
    classes[5:25, 3:20, 2:9] = aorta
    classes[10, 10, 10] = ventricle
    affine = np.diag([0.5, 0.5, 1.25, 1.0])
    path = tmp_path / "labels.nii.gz"
    write_label_volume(classes, affine, table, path)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    expected = np.where(classes == aorta, 820, np.where(classes == ventricle, 500, 0))
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)
    np.testing.assert_allclose(nib.load(path).affine, affine)
    assert image.get_data_dtype() == np.int16
