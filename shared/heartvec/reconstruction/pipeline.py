"""`reconstruct(...)`: the one reconstruction code path of the CLI, the service and the worker.

load + validate -> surface points with classes (the training data's own code) -> encode ->
(optional latent refinement) -> per-class SDF on a narrow-band grid -> marching cubes per
class -> label volume on the input's grid -> outputs and report.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.labels import LARGE_CLASSES, LabelTable
from heartvec.model.checkpoint import (
    file_sha256,
    level_offsets_of,
    load_checkpoint,
    model_from_checkpoint,
)
from heartvec.model.sampling import balanced_surface_subsample
from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import (
    DEFAULT_SCALE_MM,
    Normalization,
    fitted_normalization,
    fixed_normalization,
)
from heartvec.reconstruction import defaults
from heartvec.reconstruction.contours import slice_contours
from heartvec.reconstruction.export import write_label_volume, write_meshes
from heartvec.reconstruction.grid import SdfGrid, decode_grid, negative_extent
from heartvec.reconstruction.hostwork import (
    Deferred,
    draw_preview,
    preview_slices,
    running_host_pool,
)
from heartvec.reconstruction.meshes import class_meshes, label_volume
from heartvec.reconstruction.metrics import overlaps, surface_distances
from heartvec.reconstruction.refine import TARGETS as REFINE_TARGETS
from heartvec.reconstruction.refine import refine_latents, start_targets
from heartvec.resources import available_cpus, peak_memory_mb
from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface, class_surfaces
from heartvec.volume import LabelVolume, load_label_volume

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
"""Called with (stage name, overall fraction done in [0, 1]) as each stage starts."""

STAGES = ("load", "model", "encode", "refine", "decode", "meshes", "labels", "write", "report")
"""In order. The preview PNG is drawn on a thread (or a host pool's process) from the start of
'write' to the end of 'report' (their timings include waiting for it)."""
GRID_MARGIN = 0.05  # normalized units of room around the input's surfaces


@dataclass(frozen=True, kw_only=True)
class ReconstructSettings:
    """Args:
    resolution: grid points along the longest side of the heart's box (up to 512).
    refine_steps: gradient steps to fit the input itself (0: none).
    refine_lr: Adam's step size for those steps.
    refine_target: what the steps change: 'context' (the processed latent set the decoder
        attends to) or 'latents' (the latent set; see heartvec.reconstruction.refine).
    refine_sign_weight: weight of the sign term in the refinement's fit loss (0: L1 only).
    device: 'cpu', 'cuda' or 'cuda:N'.
    seed: seeds the surface sampling.
    min_piece: pieces of a class's decoded inside smaller than this fraction of its largest
        piece are dropped (stray pieces where the field dips below zero far from the class;
        `class_meshes`); 0 keeps every piece.
    precision: of the decoding: 'auto' (bf16 autocast on GPUs and on CPUs with native bf16
        instructions, fp32 elsewhere), 'fp32' or 'bf16'. Encoding and refinement stay fp32:
        refinement in bf16 lost 0.02 mean Dice on unseen phantoms, bf16 decoding nothing
        measurable, at 1.8x the decoding speed on an AVX512-BF16 CPU (BENCHMARKS.md).
    refine_step_mode: how the refinement's steps run (`refine_latents`' `step_mode`; 'auto':
        replayed as a CUDA graph on a GPU).
    """

    resolution: int = defaults.RESOLUTION
    refine_steps: int = defaults.REFINE_STEPS
    refine_lr: float = defaults.REFINE_LR
    refine_target: str = defaults.REFINE_TARGET
    refine_sign_weight: float = defaults.REFINE_SIGN_WEIGHT
    device: str = "cpu"
    seed: int = 0
    precision: str = "auto"
    min_piece: float = defaults.MIN_PIECE
    refine_step_mode: str = "auto"

    def __post_init__(self) -> None:
        if not 0 <= self.min_piece < 1:  # also NaN
            raise InputError("--min-piece", f"{self.min_piece}: need 0 <= fraction < 1")
        if self.refine_target not in REFINE_TARGETS:
            raise ValueError(
                f"refinement target {self.refine_target!r}: expected one of {REFINE_TARGETS}"
            )


PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 matrix
    products run faster than fp32; elsewhere bf16 is emulated and slower (Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def decode_autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """The autocast context decoding runs under (`dtype` from `autocast_dtype`; None: fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise InputError("--precision", f"{precision!r}: expected one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint loaded once and reused for many volumes (a worker process keeps one).

    Args:
        checkpoint: the file it came from.
        sha256: hex digest of that file (recorded in every report).
        state: the checkpoint's contents (class names, configs, normalization).
        model: the autoencoder in eval mode on `device`.
    """

    checkpoint: Path
    sha256: str
    state: dict[str, Any]
    model: VecSetAutoencoder
    device: torch.device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint for reconstruction.

    Raises:
        CheckpointError: a missing or broken checkpoint.
    """
    device = torch.device(device)
    state = load_checkpoint(checkpoint, map_location=device)
    model = model_from_checkpoint(state).to(device).eval()
    return LoadedModel(Path(checkpoint), file_sha256(Path(checkpoint)), state, model, device)


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
    """Reconstruct one label volume; writes the outputs of CONTRACT.md into `out_dir`.

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
    # the host pool of a process that started one (the worker and the embedded service, with
    # their model); for one volume, spawning it cost more than it saved (BENCHMARKS.md, "GPU")
    pool = running_host_pool()
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
        _check_classes(state, volume, loaded.checkpoint)
        normalization = checkpoint_normalization(state, surfaces)
    dtype = autocast_dtype(settings.precision, device)
    if device.type == "cuda" and pool is None:  # the CPU waits for the GPU: import the
        # preview's matplotlib now (a pool's workers have it)
        threading.Thread(target=import_module, args=(_RENDER_MODULE,), daemon=True).start()
    targets = None  # the refinement's exact distances: on the pool while the device encodes
    if settings.refine_steps > 0:
        targets = start_targets(volume, surfaces, normalization, (settings.seed, 1), pool)

    with clock.stage("encode"):
        points, labels = encoder_inputs(model, surfaces, normalization, rng)
        with torch.no_grad():
            latents = model.encode(points.to(device), labels.to(device)).float()  # (1, M, D)
    truncation = state["train_config"].get("truncation")
    with clock.stage("refine"):
        refinement, context = None, None
        if settings.refine_steps > 0:
            latents, context, refinement = refine_latents(
                model,
                latents,
                volume,
                surfaces,
                normalization,
                settings.refine_steps,
                truncation,
                rng,
                settings.refine_lr,
                settings.refine_target,
                settings.refine_sign_weight,
                targets=targets,
                step_mode=settings.refine_step_mode,
            )
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
            class_metrics = _class_metrics(volume, classes, surfaces, meshes)
            preview.result()
            report: dict[str, Any] = {
                "input": str(source),
                "label_table": label_table.name,
                "classes": class_metrics,
                "grid": {
                    "resolution": settings.resolution,
                    "evaluated_points": grid.evaluated,
                    "decoding": "dense" if grid.evaluated == settings.resolution**3 else "band",
                    "min_piece": settings.min_piece,
                    "pieces_dropped": {
                        label_table.class_name(c): n for c, n in sorted(dropped.items())
                    },
                    "low": grid.low.tolist(),
                    "high": grid.high.tolist(),
                },
                "normalization": {
                    "center_mm": normalization.center.tolist(),
                    "scale_mm": normalization.scale,
                },
                "model": {
                    "preset": state.get("preset"),
                    "epoch": state.get("epoch"),
                    "checkpoint": str(loaded.checkpoint),
                    "checkpoint_sha256": loaded.sha256,
                    "level_offset": level_offsets_of(state),
                },
                "device": str(device),
                "precision": "bf16" if dtype is not None else "fp32",
                "refinement": refinement,
            }
            report["summary"] = _summary(class_metrics)
    report["timings"] = {**clock.timings, "total_s": round(sum(clock.timings.values()), 3)}
    report["peak_memory_mb"] = peak_memory_mb()
    if device.type == "cuda":
        report["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if progress is not None:
        progress("done", 1.0)
    return report


def _check_classes(state: dict[str, Any], volume: LabelVolume, checkpoint: Path) -> None:
    names = state["class_names"]
    present = np.flatnonzero(volume.class_present()) + 1
    wanted = [volume.label_table.class_name(int(c)) for c in present]
    missing = [n for n in wanted if n not in names]
    if missing or list(names) != list(volume.label_table.class_names):
        raise InputError(
            checkpoint,
            f"checkpoint classes {names} do not fit the volume's classes {wanted} "
            f"(label table '{volume.label_table.name}')",
        )


def checkpoint_normalization(state: dict[str, Any], surfaces: dict[int, Surface]) -> Normalization:
    """The frame of the checkpoint's training data (checkpoints before it was recorded used the
    default fixed scale)."""
    recorded = state.get("normalization", {"scale_mm": DEFAULT_SCALE_MM})
    scale = recorded["scale_mm"]
    return fitted_normalization(surfaces) if scale is None else fixed_normalization(surfaces, scale)


_RENDER_MODULE = "heartvec.reconstruction.render"


def encoder_inputs(
    model: VecSetAutoencoder,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's surface points (1, N, 3), normalized, and their classes (1, N),
    drawn evenly per class as in training."""
    count = model.config.num_inputs
    world, labels, _ = sample_surfaces(surfaces, 8 * count, rng)
    points, labels = balanced_surface_subsample(
        normalization.to_normalized(world), labels, count, rng
    )
    return torch.from_numpy(points)[None], torch.from_numpy(labels)[None]


DENSE_CHUNK_GPU = 262_144  # grid points decoded at once on a GPU
DENSE_GPU_MAX_RESOLUTION = 256
"""Largest grid decoded densely on a GPU (its query points alone are 0.4 GB at 256)."""

TRACKED_CELL_MM = 5.0
"""Band cells up to this wide follow the surfaces by sign changes; wider ones keep the distance
test, which finds a structure that lies between their corners. About the width of the
thinnest vessels, which all join a chamber, so a surface followed from there reaches them."""


def tracked_levels(spacing_mm: float) -> int:
    """How many of the band's finest levels (cells 2, 4, 8 ... grid spacings wide) have cells
    at most TRACKED_CELL_MM wide; at least the finest."""
    return max(1, int(np.floor(np.log2(TRACKED_CELL_MM / spacing_mm))))


def decode_latents(
    model: VecSetAutoencoder,
    latents: torch.Tensor,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    resolution: int,
    truncation: float | None,
    dense: bool | None = None,
) -> SdfGrid:
    """The per-class SDF of a latent set on a resolution^3 cube around the input's surfaces
    (`decode_context` of its processed latents)."""
    with torch.no_grad():
        context = model.process(latents)
    return decode_context(model, context, surfaces, normalization, resolution, truncation, dense)


def decode_context(
    model: VecSetAutoencoder,
    context: torch.Tensor,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    resolution: int,
    truncation: float | None,
    dense: bool | None = None,
) -> SdfGrid:
    """The per-class SDF of a decoder context (a processed latent set, `model.process`) on a
    resolution^3 cube around the input's surfaces.

    `dense` evaluates every grid point; None chooses by device: the narrow band on the CPU,
    where the decoder's arithmetic is the cost, and the dense grid on a GPU up to resolution
    256, where the band's bookkeeping on the CPU would be (on an H200 at 256: dense 2.1 s, band
    12.1 s; BENCHMARKS.md). Above 256 the band also bounds the query points held at once.
    """
    device = context.device
    if dense is None:
        dense = device.type == "cuda" and resolution <= DENSE_GPU_MAX_RESOLUTION
    low, high = normalization.bounds(surfaces)
    centre, half = (low + high) / 2, float(np.max(high - low)) / 2 + GRID_MARGIN
    context = context.detach()
    chunk = DENSE_CHUNK_GPU if device.type == "cuda" else 8_192
    if dense:
        values = decode_dense(model, context, centre - half, centre + half, resolution, chunk)
        grid = SdfGrid(values.cpu().numpy(), centre - half, centre + half, resolution**3)
        if device.type == "cuda":  # the classes' extents, where the values are (0.1-0.2 s on
            grid.set_negative_extent(negative_extent(values))  # a CPU's cores)
        return grid
    with torch.no_grad():

        def sdf_at(points: np.ndarray) -> np.ndarray:
            queries = torch.from_numpy(points.astype(np.float32))[None].to(context.device)
            return model.decode(context, queries)[0].float().cpu().numpy()

        return decode_grid(
            sdf_at,
            centre - half,
            centre + half,
            resolution,
            units_per_distance=1 / truncation if truncation else 1.0,
            chunk=chunk,
            sign_levels=tracked_levels(2 * half * normalization.scale / (resolution - 1)),
        )


@torch.no_grad()
def decode_dense(
    model: VecSetAutoencoder,
    context: torch.Tensor,
    low: np.ndarray,
    high: np.ndarray,
    resolution: int,
    chunk: int,
) -> torch.Tensor:
    """(R, R, R, C) float32 on the context's device: the decoder at every point of a
    resolution^3 grid spanning [low, high] (the points of `grid.grid_points`, made on the
    device from their indices).

    On a GPU the values stay there until the caller copies them once: building the 16.8M points
    and joining the chunks' values on the host cost 2-5 s at 256^3 on a 2-core CPU, more than an
    H200 takes to decode them, and page-locking a host buffer for copies that do not wait cost
    0.26 s a volume (0.5 s after the refinement's CUDA graph emptied torch's cache of them).
    """
    device = context.device
    total = resolution**3
    start_point = torch.tensor(low, dtype=torch.float64, device=device)
    step = torch.tensor((high - low) / (resolution - 1), dtype=torch.float64, device=device)
    classes = model.config.num_classes
    values = torch.empty((total, classes), dtype=torch.float32, device=device)
    for first in range(0, total, chunk):
        index = torch.arange(first, min(first + chunk, total), device=device)
        ijk = torch.stack(
            (index // resolution**2, index // resolution % resolution, index % resolution), dim=1
        )
        points = (start_point + ijk * step).float()
        values[first : first + len(index)] = model.decode(context, points[None])[0].float()
    return values.view(resolution, resolution, resolution, classes)


def _class_metrics(
    volume: LabelVolume,
    classes: np.ndarray,
    surfaces: dict[int, Surface],
    meshes: dict[int, Surface],
) -> dict[str, dict[str, float | None]]:
    """Dice and IoU per class, and surface distances for the classes with a mesh: a class per
    thread, one core each (the nearest-neighbour queries and most of the sampling run without
    the GIL; ten classes one at a time on all cores took 1.0-1.1 s on a 2-core CPU, on two
    threads 0.6-0.8 s, and a GPU machine's cores take a class each)."""
    metrics: dict[str, dict[str, float | None]] = {}
    overlap = overlaps(volume.classes, classes, surfaces)
    with_mesh = [c for c in surfaces if c in meshes]
    with ThreadPoolExecutor(max(1, min(len(with_mesh), available_cpus()))) as pool:
        distances = dict(
            zip(
                with_mesh,
                pool.map(lambda c: surface_distances(surfaces[c], meshes[c], workers=1), with_mesh),
                strict=True,
            )
        )
    for class_index in surfaces:
        name = volume.label_table.class_name(class_index)
        row: dict[str, float | None] = dict(overlap[class_index])
        row.update(distances.get(class_index, {"chamfer_mm": None, "hd95_mm": None}))
        metrics[name] = row
    return metrics


def _summary(classes: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    def mean(names: list[str], key: str) -> float | None:
        values = [classes[n][key] for n in names if classes[n][key] is not None]
        return float(np.mean(values)) if values else None  # type: ignore[arg-type]

    every = list(classes)
    large = [n for n in every if n in LARGE_CLASSES]
    return {
        "mean_dice": mean(every, "dice"),
        "mean_dice_large": mean(large, "dice"),
        "mean_iou": mean(every, "iou"),
        "mean_chamfer_mm": mean(every, "chamfer_mm"),
        "mean_hd95_mm": mean(every, "hd95_mm"),
        "max_hd95_mm": max(
            (v["hd95_mm"] for v in classes.values() if v["hd95_mm"] is not None), default=None
        ),
    }
