"""`reconstruct(...)`: the one reconstruction code path of the CLI, the service and the worker.

load + validate -> surface points with classes (the training data's own code) -> encode ->
(optional latent refinement) -> per-class SDF on a grid, each class held to where it lies in
the input -> marching cubes per class -> label volume on the input's grid -> outputs, the
shape code that draws them again, and the report.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.labels import LabelTable
from heartvec.normalization import Normalization
from heartvec.reconstruction import defaults
from heartvec.reconstruction.contours import preview_slices, slice_contours
from heartvec.reconstruction.decoding import (
    autocast_dtype,
    decode_autocast,
    decode_box,
    grid_box,
)
from heartvec.reconstruction.encoding import (
    EncoderSample,
    LoadedModel,
    check_classes,
    checkpoint_normalization,
    load_model,
)
from heartvec.reconstruction.export import write_label_volume, write_meshes
from heartvec.reconstruction.frame_search import FrameScore, FrameSteps, search_frame
from heartvec.reconstruction.hostwork import Deferred, running_host_pool
from heartvec.reconstruction.meshes import shape_labels, shape_meshes
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.reconstruction.refine import RefineSettings, refine_latents
from heartvec.reconstruction.refine_targets import start_targets
from heartvec.reconstruction.render import draw_preview
from heartvec.reconstruction.report import (
    class_metrics,
    grid_record,
    model_record,
    normalization_record,
    summary,
    support_record,
)
from heartvec.reconstruction.shape_code import ShapeCode
from heartvec.reconstruction.stages import Progress, StageClock
from heartvec.reconstruction.supports import MARGIN_MM, ClassSupports
from heartvec.resources import peak_memory_mb
from heartvec.surfaces import Surface, class_surfaces
from heartvec.volume import LabelVolume, VoxelGrid, load_label_volume

STAGES = ("load", "model", "frame", "encode", "refine", "decode", "meshes", "labels", "write",
          "report")  # fmt: skip
"""In order. The preview PNG is drawn on a thread (or a host pool's process) from the start of
'write' to the end of 'report' (their timings include waiting for it)."""

HOST_POOL_IMPORTS = (
    "heartvec.reconstruction.class_mesh",
    "heartvec.reconstruction.refine_targets",
    "heartvec.reconstruction.render",
    "matplotlib.figure",
)
"""What a host pool's workers import as they start (`hostwork.host_pool`): the jobs' modules."""


@dataclass(frozen=True, kw_only=True)
class ReconstructSettings:
    """Args:
    resolution: grid points along the longest side of the heart's box (the range:
        `ReconstructOptions`).
    refine: the latent refinement's settings (`refine.steps` 0: none; the ranges:
        `ReconstructOptions.refine_steps` and `.refine_points`).
    frame_search: frames (encodes) a search over the normalized frame's centre and scale may
        score against the input before the best is encoded (`frame_search`); 0 or 1: the
        checkpoint's frame centred on the input's box only.
    device: 'cpu', 'cuda' or 'cuda:N'.
    seed: seeds the surface sampling.
    min_piece: pieces of a class's decoded inside smaller than this fraction of its largest
        piece are dropped (stray pieces where the field dips below zero far from the class;
        `class_meshes`); 0 keeps every piece.
    support_margin_mm: how far from where the input has a class the class may appear
        (`supports`); None: anywhere.
    working_mm: the input's class surfaces are extracted on blocks of voxels at most this
        wide (`class_surfaces`); None: on the input's own voxels. The label volume and Dice stay
        on the input's grid.
    precision: of the decoding: 'auto' (bf16 autocast on GPUs and on CPUs with native bf16
        instructions, fp32 elsewhere), 'fp32' or 'bf16'. Encoding and refinement stay fp32:
        refinement in bf16 lost Dice, bf16 decoding nothing measurable (BENCHMARKS.md).
    """

    resolution: int = defaults.RESOLUTION
    refine: RefineSettings = field(default_factory=RefineSettings)
    frame_search: int = defaults.FRAME_SEARCH
    device: str = "cpu"
    seed: int = 0
    precision: str = "auto"
    min_piece: float = defaults.MIN_PIECE
    support_margin_mm: float | None = MARGIN_MM
    working_mm: float | None = defaults.WORKING_MM

    def __post_init__(self) -> None:
        ReconstructOptions.check("resolution", self.resolution, "--resolution")
        ReconstructOptions.check("refine_steps", self.refine.steps, "--refine-steps")
        ReconstructOptions.check("refine_points", self.refine.points_per_step, "--refine-points")
        ReconstructOptions.check("frame_search", self.frame_search, "--frame-search")
        if not 0 <= self.min_piece < 1:  # also NaN
            raise InputError("--min-piece", f"{self.min_piece}: need 0 <= fraction < 1")
        if self.working_mm is not None and not 0 < self.working_mm < float("inf"):
            raise InputError("working_mm", f"{self.working_mm}: need a spacing > 0 mm or None")


def reconstruct(
    source: str | Path,
    out_dir: str | Path,
    label_table: LabelTable,
    checkpoint: str | Path | LoadedModel,
    settings: ReconstructSettings = ReconstructSettings(),
    ignore_unknown_labels: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Reconstruct one label volume into `out_dir`: meshes, `heart.glb`, `reconstruction.nii.gz`,
    `latent.npy`, `shape_code.npz`, `slices.json`, `preview.png` and `report.json`.

    Args:
        checkpoint: a checkpoint file (loaded on `settings.device`), or a `LoadedModel` (its
            own device is used).
        progress: called as each stage starts; an exception it raises (a cancelled job) stops
            the reconstruction there.

    Returns:
        the report (also written to `out_dir/report.json`).

    Raises:
        InputError: a bad volume, or a checkpoint whose classes do not cover the volume's.
        CheckpointError: a missing or broken checkpoint.
    """
    out_dir = Path(out_dir)
    clock = StageClock(STAGES, progress)
    rng = np.random.default_rng(settings.seed)
    pool = running_host_pool()  # a process that keeps its model started one; none is started here
    with clock.stage("load"):
        whole = load_label_volume(source, label_table, ignore_unknown_labels)
        volume = whole.crop(*whole.foreground_box(margin=2))  # the heart, for its surfaces
        surfaces = class_surfaces(volume, settings.working_mm)
    with clock.stage("model"):
        loaded = (
            checkpoint
            if isinstance(checkpoint, LoadedModel)
            else load_model(checkpoint, settings.device)
        )
        state, model, device = loaded.state, loaded.model, loaded.device
        check_classes(state, volume, loaded.checkpoint)
        normalization = checkpoint_normalization(state, surfaces)
    dtype = autocast_dtype(settings.precision, device)
    with clock.stage("frame"):
        sample = EncoderSample.draw(model, surfaces, rng)  # every frame encodes these points
        frame_record = None
        if settings.frame_search > 1:
            score = FrameScore(
                model, volume, surfaces, sample, np.random.default_rng((settings.seed, 2)), dtype
            )
            steps = FrameSteps(
                settings.frame_search, defaults.FRAME_STEP_MM, defaults.FRAME_SCALE_STEP,
                defaults.FRAME_HALVINGS,
            )  # fmt: skip
            normalization, frame_record = search_frame(score, normalization, steps)
    if device.type == "cuda" and pool is None:  # the preview's matplotlib while the GPU works
        threading.Thread(target=import_module, args=("matplotlib.figure",), daemon=True).start()
    targets = None  # the refinement's exact distances: they start while the device encodes
    if settings.refine.steps > 0:
        targets = start_targets(
            volume, surfaces, normalization, (settings.seed, 1), pool,
            settings.refine.class_balance, settings.refine.target_points,
        )  # fmt: skip
    low, high = grid_box(normalization, surfaces)
    # from here on the heart and the decoding cube around it: beyond them the input has no
    # class and the reconstruction none either (it is decoded within the cube)
    volume = whole.crop(*_working_region(whole, volume, normalization, low, high))
    supports = _start_supports(volume, surfaces, normalization, low, high, settings)

    with clock.stage("encode"):
        points, labels = sample.inputs(normalization)
        with torch.no_grad():
            latents = model.encode(points.to(device), labels.to(device)).float()  # (1, M, D)
    encoded = latents
    truncation = state["train_config"].get("truncation")
    with clock.stage("refine"):
        refinement, context = None, None
        if settings.refine.steps > 0:
            latents, context, refinement = refine_latents(
                model, latents, volume, surfaces, normalization, truncation, rng,
                settings.refine, targets,
            )  # fmt: skip
    refined_context = context if settings.refine.target == "context" else None
    with clock.stage("decode"), decode_autocast(dtype, device):
        if context is None:
            with torch.no_grad():
                context = model.process(latents)
        grid = decode_box(
            model, context, low, high, settings.resolution, truncation, normalization.scale
        )
    present = set(surfaces)
    with clock.stage("meshes"):
        meshes, dropped, outside = shape_meshes(
            grid, normalization, supports.result(), settings.min_piece, present, pool
        )
    with clock.stage("labels"):
        classes = shape_labels(grid, normalization, volume, present, device)
    with ThreadPoolExecutor(1) as preview_thread:  # matplotlib's drawing beside the rest
        out_dir.mkdir(parents=True, exist_ok=True)
        preview_args = (preview_slices(volume.classes, classes), meshes, out_dir / "preview.png")
        preview: Deferred | Future[None] = (
            Deferred(draw_preview, preview_args, pool)  # a process: no GIL shared
            if pool is not None
            else preview_thread.submit(draw_preview, *preview_args)
        )
        with clock.stage("write"):
            write_meshes(meshes, label_table, out_dir)
            path = out_dir / "reconstruction.nii.gz"
            write_label_volume(_in_file(classes, volume, whole), whole.affine, label_table, path)
            np.save(out_dir / "latent.npy", latents[0].detach().float().cpu().numpy())
            ShapeCode(
                checkpoint_sha256=loaded.sha256,
                latents=latents[0].detach().float().cpu().numpy(),
                encoded=encoded[0].detach().float().cpu().numpy(),
                context=None
                if refined_context is None
                else refined_context[0].detach().float().cpu().numpy(),
                normalization=normalization,
                low=low,
                high=high,
                resolution=settings.resolution,
                min_piece=settings.min_piece,
                supports=supports.result(),
                grid=VoxelGrid(whole.affine, whole.shape),
                label_table=label_table,
                classes=tuple(sorted(present)),
            ).save(out_dir / "shape_code.npz")
            (out_dir / "slices.json").write_text(json.dumps(slice_contours(volume)))
        with clock.stage("report"):
            metrics = class_metrics(volume, classes, surfaces, meshes)
            preview.result()
            report: dict[str, Any] = {
                "input": str(source),
                "label_table": label_table.name,
                "classes": metrics,
                "grid": grid_record(
                    grid, settings.resolution, settings.min_piece, dropped, label_table
                )
                | support_record(supports.result(), outside, grid, normalization, label_table),
                "normalization": normalization_record(normalization),
                "frame_search": frame_record,
                "model": model_record(loaded),
                "device": str(device),
                "precision": "bf16" if dtype is not None else "fp32",
                "refinement": refinement,
                "summary": summary(metrics),
            }
    report["timings"] = clock.summary()
    report["peak_memory_mb"] = peak_memory_mb()
    if device.type == "cuda":
        report["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if progress is not None:
        progress("done", 1.0)
    return report


def _start_supports(
    volume: LabelVolume,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    low: np.ndarray,
    high: np.ndarray,
    settings: ReconstructSettings,
) -> Future[ClassSupports]:
    """Where each class may appear (`supports`), made on a thread beside the device's work."""
    if settings.support_margin_mm is None:
        everywhere: Future[ClassSupports] = Future()
        everywhere.set_result(ClassSupports.everywhere(volume.label_table.num_classes, low))
        return everywhere
    thread = ThreadPoolExecutor(1)
    supports = thread.submit(
        ClassSupports.of_input, volume, surfaces, normalization, low, high,
        settings.support_margin_mm,
    )  # fmt: skip
    thread.shutdown(wait=False)  # its thread ends with the job
    return supports


def _working_region(
    whole: LabelVolume,
    heart: LabelVolume,
    normalization: Normalization,
    low: np.ndarray,
    high: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of `whole` that hold the heart (the crop `heart`) or the decoding cube
    [low, high] (normalized): (first, one past last) indices."""
    cube_low, cube_high = whole.box_around(
        normalization.to_world(low), normalization.to_world(high)
    )
    heart_low = np.array(heart.origin)
    return np.minimum(cube_low, heart_low), np.maximum(cube_high, heart_low + heart.shape)


def _in_file(classes: np.ndarray, region: LabelVolume, whole: LabelVolume) -> np.ndarray:
    """The label volume of a crop (`region`) on the whole file's grid, background elsewhere."""
    if region.shape == whole.shape:
        return classes
    placed = np.zeros(whole.shape, dtype=classes.dtype)
    first = region.origin
    placed[tuple(slice(o, o + n) for o, n in zip(first, region.shape, strict=True))] = classes
    return placed
