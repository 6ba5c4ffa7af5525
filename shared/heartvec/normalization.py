"""The normalized frame the model sees: `world_mm = center + scale * p`, p in about [-1, 1]^3."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heartvec.surfaces import Surface

DEFAULT_SCALE_MM = 100.0
"""Half the side of the [-1, 1]^3 cube in mm: 200 mm holds an adult heart with room to spare.

A fixed physical scale keeps size information (size is anatomy); `fitted` discards it."""


@dataclass(frozen=True)
class Normalization:
    """Maps world millimetres to the normalized frame and back.

    Args:
        center: float64 (3,) world mm, the origin of the normalized frame.
        scale: mm per normalized unit.
    """

    center: np.ndarray
    scale: float

    def to_normalized(self, world: np.ndarray) -> np.ndarray:
        """(N, 3) world mm -> (N, 3) normalized."""
        return np.asarray((world - self.center) / self.scale)

    def bounds(self, surfaces: dict[int, Surface]) -> tuple[np.ndarray, np.ndarray]:
        """(3,) lowest and highest normalized coordinates of all class surfaces."""
        low, high = surface_bounds(surfaces)
        return self.to_normalized(low), self.to_normalized(high)  # scale > 0: order kept

    def to_world(self, normalized: np.ndarray) -> np.ndarray:
        """(N, 3) normalized -> (N, 3) world mm."""
        return np.asarray(self.center + self.scale * normalized)


def surface_bounds(surfaces: dict[int, Surface]) -> tuple[np.ndarray, np.ndarray]:
    """(3,) lowest and highest world mm of all class surfaces."""
    low = np.min([s.vertices.min(axis=0) for s in surfaces.values()], axis=0)
    high = np.max([s.vertices.max(axis=0) for s in surfaces.values()], axis=0)
    return low, high


def fixed_normalization(
    surfaces: dict[int, Surface], scale_mm: float = DEFAULT_SCALE_MM
) -> Normalization:
    """Centre on the bounding box of all class surfaces, keep a fixed physical scale."""
    low, high = surface_bounds(surfaces)
    return Normalization(center=(low + high) / 2, scale=float(scale_mm))


def fitted_normalization(surfaces: dict[int, Surface], margin: float = 0.05) -> Normalization:
    """Centre on the bounding box and scale so its longest half-side maps to 1 - margin."""
    low, high = surface_bounds(surfaces)
    half_extent = float(np.max(high - low)) / 2
    return Normalization(center=(low + high) / 2, scale=half_extent / (1 - margin))
