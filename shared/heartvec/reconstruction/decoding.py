"""From a latent set to a per-class SDF on a grid around the input's surfaces: the decoder's
precision, and dense or narrow-band decoding."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import Normalization
from heartvec.reconstruction.grid import SdfGrid, decode_grid, negative_extent
from heartvec.surfaces import Surface

PRECISIONS = ("auto", "fp32", "bf16")
GRID_MARGIN = 0.05  # normalized units of room around the input's surfaces
DENSE_CHUNK_GPU = 262_144  # grid points decoded at once on a GPU
DENSE_GPU_MAX_RESOLUTION = 256
"""Largest grid decoded densely on a GPU (its query points alone are 0.4 GB at 256)."""

TRACKED_CELL_MM = 5.0
"""Band cells up to this wide follow the surfaces by sign changes; wider ones keep the distance
test, which finds a structure that lies between their corners. About the width of the
thinnest vessels, which all join a chamber, so a surface followed from there reaches them."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 matrix
    products run faster than fp32; elsewhere bf16 is emulated and slower (Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of decoding at `precision` ('auto', 'fp32', 'bf16') on `device`, or
    None for plain fp32. 'auto': bf16 on GPUs and on CPUs with native bf16 instructions."""
    if precision not in PRECISIONS:
        raise InputError("--precision", f"{precision!r}: expected one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def decode_autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """The autocast context decoding runs under (`dtype` from `autocast_dtype`; None: fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


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


def grid_box(
    normalization: Normalization, surfaces: dict[int, Surface]
) -> tuple[np.ndarray, np.ndarray]:
    """The cube a reconstruction decodes on: around the input's surfaces with GRID_MARGIN of
    room, in the normalized frame ((3,) first and last grid point)."""
    low, high = normalization.bounds(surfaces)
    centre, half = (low + high) / 2, float(np.max(high - low)) / 2 + GRID_MARGIN
    return centre - half, centre + half


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
    resolution^3 cube around the input's surfaces (`grid_box`, `decode_box`)."""
    low, high = grid_box(normalization, surfaces)
    return decode_box(model, context, low, high, resolution, truncation, normalization.scale, dense)


def decode_box(
    model: VecSetAutoencoder,
    context: torch.Tensor,
    low: np.ndarray,
    high: np.ndarray,
    resolution: int,
    truncation: float | None,
    scale_mm: float,
    dense: bool | None = None,
) -> SdfGrid:
    """The per-class SDF of a decoder context on a resolution^3 grid from `low` to `high`
    (normalized; `scale_mm` millimetres a unit).

    `dense` evaluates every grid point; None chooses by device: the narrow band on the CPU,
    where the decoder's arithmetic is the cost, and the dense grid on a GPU up to resolution
    256, where the band's bookkeeping on the CPU would be. Above 256 the band also bounds the
    query points held at once.
    """
    device = context.device
    if dense is None:
        dense = device.type == "cuda" and resolution <= DENSE_GPU_MAX_RESOLUTION
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    context = context.detach()
    chunk = DENSE_CHUNK_GPU if device.type == "cuda" else 8_192
    if dense:
        values = decode_dense(model, context, low, high, resolution, chunk)
        grid = SdfGrid(values.cpu().numpy(), low, high, resolution**3)
        if device.type == "cuda":  # the classes' extents where the values are: cheaper there
            grid.set_negative_extent(negative_extent(values))
        return grid
    with torch.no_grad():

        def sdf_at(points: np.ndarray) -> np.ndarray:
            queries = torch.from_numpy(points.astype(np.float32))[None].to(context.device)
            return model.decode(context, queries)[0].float().cpu().numpy()

        return decode_grid(
            sdf_at,
            low,
            high,
            resolution,
            units_per_distance=1 / truncation if truncation else 1.0,
            chunk=chunk,
            sign_levels=tracked_levels(float(np.max(high - low)) * scale_mm / (resolution - 1)),
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

    On a GPU the values stay there until the caller copies them once: building the points and
    joining the chunks' values on the host would cost more than decoding them, and so would
    page-locking a host buffer for copies that do not wait.
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
