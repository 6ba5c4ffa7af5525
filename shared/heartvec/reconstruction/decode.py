"""`decode(...)`: a stored shape code -> the meshes, `heart.glb` and label volume of the
reconstruction it came from, by the decoder of the checkpoint that made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heartvec.errors import InputError
from heartvec.reconstruction.decoding import autocast_dtype, decode_autocast, decode_box
from heartvec.reconstruction.encoding import LoadedModel, load_model
from heartvec.reconstruction.export import write_label_volume, write_meshes
from heartvec.reconstruction.meshes import shape_labels, shape_meshes
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.reconstruction.report import grid_record, model_record, support_record
from heartvec.reconstruction.shape_code import load_shape_code
from heartvec.reconstruction.stages import Progress, StageClock

STAGES = ("load", "model", "decode", "meshes", "labels", "write")


@dataclass(frozen=True, kw_only=True)
class DecodeSettings:
    """Args:
    resolution: grid points along each side of the code's box (None: the reconstruction's).
    device: 'cpu', 'cuda' or 'cuda:N'.
    precision: of the decoding, as `ReconstructSettings.precision`.
    """

    resolution: int | None = None
    device: str = "cpu"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.resolution is not None:
            ReconstructOptions.check("resolution", self.resolution, "--resolution")


def decode(
    code_path: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | LoadedModel,
    settings: DecodeSettings = DecodeSettings(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Draw a shape code into `out_dir`: `meshes/`, `heart.glb`, `reconstruction.nii.gz` (on the
    input's grid and affine, in its label values) and `report.json` (timings, grid, model).

    Raises:
        InputError: not a shape code, or one made by another checkpoint than `checkpoint`.
        CheckpointError: a missing or broken checkpoint.
    """
    code_path, out_dir = Path(code_path), Path(out_dir)
    clock = StageClock(STAGES, progress)
    with clock.stage("load"):
        code = load_shape_code(code_path)
    with clock.stage("model"):
        loaded = (
            checkpoint
            if isinstance(checkpoint, LoadedModel)
            else load_model(checkpoint, settings.device)
        )
        if loaded.sha256 != code.checkpoint_sha256:
            raise InputError(
                code_path,
                f"made by the checkpoint of sha256 {code.checkpoint_sha256[:16]}..., not by "
                f"{loaded.checkpoint} ({loaded.sha256[:16]}...): decode it with that "
                "checkpoint (--checkpoint)",
            )
    model, device = loaded.model, loaded.device
    resolution = settings.resolution or code.resolution
    dtype = autocast_dtype(settings.precision, device)
    truncation = loaded.state["train_config"].get("truncation")
    with clock.stage("decode"), decode_autocast(dtype, device):
        with torch.no_grad():
            if code.context is not None:
                context = torch.from_numpy(code.context)[None].to(device)
            else:
                context = model.process(torch.from_numpy(code.latents)[None].to(device))
        grid = decode_box(
            model, context, code.low, code.high, resolution, truncation, code.normalization.scale
        )
    present = set(code.classes)
    with clock.stage("meshes"):
        meshes, dropped, outside = shape_meshes(
            grid, code.normalization, code.supports, code.min_piece, present
        )
    with clock.stage("labels"):
        classes = shape_labels(grid, code.normalization, code.grid, present, device)
    with clock.stage("write"):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_meshes(meshes, code.label_table, out_dir)
        write_label_volume(
            classes, code.grid.affine, code.label_table, out_dir / "reconstruction.nii.gz"
        )
    report: dict[str, Any] = {
        "code": str(code_path),
        "label_table": code.label_table.name,
        "classes": [code.label_table.class_name(c) for c in sorted(present)],
        "grid": grid_record(grid, resolution, code.min_piece, dropped, code.label_table)
        | support_record(code.supports, outside, grid, code.normalization, code.label_table),
        "model": model_record(loaded),
        "device": str(device),
        "precision": "bf16" if dtype is not None else "fp32",
        "timings": clock.summary(),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if progress is not None:
        progress("done", 1.0)
    return report
