"""`reconstruct(...)`: the one reconstruction code path of the CLI, the service and the worker.

load + validate -> surface points with classes (the training data's own code) -> encode ->
(optional latent refinement) -> per-class SDF on a grid -> marching cubes per class -> label
volume on the input's grid -> outputs and report.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.labels import LabelTable
from heartvec.reconstruction import defaults
from heartvec.reconstruction.contours import preview_slices, slice_contours
from heartvec.reconstruction.decoding import autocast_dtype, decode_autocast, decode_context
from heartvec.reconstruction.encoding import (
    LoadedModel,
    check_classes,
    checkpoint_normalization,
    encoder_inputs,
    load_model,
)
from heartvec.reconstruction.export import write_label_volume, write_meshes
from heartvec.reconstruction.hostwork import Deferred, running_host_pool
from heartvec.reconstruction.meshes import class_meshes, label_volume
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
)
from heartvec.resources import peak_memory_mb
from heartvec.surfaces import class_surfaces
from heartvec.volume import load_label_volume

Progress = Callable[[str, float], None]
"""Called with (stage name, overall fraction done in [0, 1]) as each stage starts."""

STAGES = ("load", "model", "encode", "refine", "decode", "meshes", "labels", "write", "report")
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
    refine: the latent refinement's settings (`refine.steps` 0: none; the range:
        `ReconstructOptions.refine_steps`).
    device: 'cpu', 'cuda' or 'cuda:N'.
    seed: seeds the surface sampling.
    min_piece: pieces of a class's decoded inside smaller than this fraction of its largest
        piece are dropped (stray pieces where the field dips below zero far from the class;
        `class_meshes`); 0 keeps every piece.
    precision: of the decoding: 'auto' (bf16 autocast on GPUs and on CPUs with native bf16
        instructions, fp32 elsewhere), 'fp32' or 'bf16'. Encoding and refinement stay fp32:
        refinement in bf16 lost Dice, bf16 decoding nothing measurable (BENCHMARKS.md).
    """

    resolution: int = defaults.RESOLUTION
    refine: RefineSettings = field(default_factory=RefineSettings)
    device: str = "cpu"
    seed: int = 0
    precision: str = "auto"
    min_piece: float = defaults.MIN_PIECE

    def __post_init__(self) -> None:
        ReconstructOptions.check("resolution", self.resolution, "--resolution")
        ReconstructOptions.check("refine_steps", self.refine.steps, "--refine-steps")
        if not 0 <= self.min_piece < 1:  # also NaN
            raise InputError("--min-piece", f"{self.min_piece}: need 0 <= fraction < 1")


class _Clock:
    def __init__(self, progress: Progress | None) -> None:
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name, STAGES.index(name) / len(STAGES))
        started = time.perf_counter()
        yield
        self.timings[f"{name}_s"] = round(time.perf_counter() - started, 3)


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
    `latent.npy`, `slices.json`, `preview.png` and `report.json`.

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
    clock = _Clock(progress)
    rng = np.random.default_rng(settings.seed)
    pool = running_host_pool()  # a process that keeps its model started one; none is started here
    with clock.stage("load"):
        volume = load_label_volume(source, label_table, ignore_unknown_labels)
        surfaces = class_surfaces(volume)
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
    if device.type == "cuda" and pool is None:  # the preview's matplotlib while the GPU works
        threading.Thread(target=import_module, args=("matplotlib.figure",), daemon=True).start()
    targets = None  # the refinement's exact distances: they start while the device encodes
    if settings.refine.steps > 0:
        targets = start_targets(volume, surfaces, normalization, (settings.seed, 1), pool)

    with clock.stage("encode"):
        points, labels = encoder_inputs(model, surfaces, normalization, rng)
        with torch.no_grad():
            latents = model.encode(points.to(device), labels.to(device)).float()  # (1, M, D)
    truncation = state["train_config"].get("truncation")
    with clock.stage("refine"):
        refinement, context = None, None
        if settings.refine.steps > 0:
            latents, context, refinement = refine_latents(
                model, latents, volume, surfaces, normalization, truncation, rng,
                settings.refine, targets,
            )  # fmt: skip
    with clock.stage("decode"), decode_autocast(dtype, device):
        if context is None:
            with torch.no_grad():
                context = model.process(latents)
        grid = decode_context(
            model, context, surfaces, normalization, settings.resolution, truncation
        )
    present = set(surfaces)
    with clock.stage("meshes"):
        meshes, dropped = class_meshes(grid, normalization, settings.min_piece, pool)
        meshes = {c: m for c, m in meshes.items() if c in present}
    with clock.stage("labels"):
        classes = label_volume(grid, normalization, volume, device)
        classes[~np.isin(classes, list(present))] = 0
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
            write_label_volume(classes, volume.affine, label_table, path)
            np.save(out_dir / "latent.npy", latents[0].detach().float().cpu().numpy())
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
                ),
                "normalization": normalization_record(normalization),
                "model": model_record(loaded),
                "device": str(device),
                "precision": "bf16" if dtype is not None else "fp32",
                "refinement": refinement,
                "summary": summary(metrics),
            }
    report["timings"] = {**clock.timings, "total_s": round(sum(clock.timings.values()), 3)}
    report["peak_memory_mb"] = peak_memory_mb()
    if device.type == "cuda":
        report["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if progress is not None:
        progress("done", 1.0)
    return report
