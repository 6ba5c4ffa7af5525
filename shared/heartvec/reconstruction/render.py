"""The pictures of a reconstruction: input vs reconstruction on three slices, and the meshes.

matplotlib is imported where the preview is drawn, not with this module: a reconstruction
imports it at its start, and matplotlib's own import takes a good part of a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.measure import find_contours

from heartvec.reconstruction.contours import Slices
from heartvec.reconstruction.export import class_colour
from heartvec.surfaces import Surface

RENDER_PIXELS = 360  # width and height of the meshes' rendering
ANTERIOR_VIEW = (0.2, 1.2, 0.3)  # towards the camera, RAS+: the web viewer's starting view


def render_meshes(
    meshes: dict[int, Surface],
    pixels: int = RENDER_PIXELS,
    towards_camera: tuple[float, float, float] = ANTERIOR_VIEW,
) -> np.ndarray:
    """A shaded picture of the class meshes (RGB float (pixels, pixels, 3) in [0, 1], white
    background), orthographic, seen from `towards_camera` (RAS+ world axes) with +z (superior)
    up (+y, anterior, when seen along z): the patient's front from slightly right and above by
    default.

    Each vertex is drawn as a square splat about its spacing wide, with a depth test (the
    nearest vertex wins a pixel) and Lambert shading from its normal (the area-weighted mean
    of its faces'): a z-buffered surface in a fraction of a second (marching-cubes vertices are
    spread evenly), where matplotlib's 3-D polygons took a second for a sparse subset of the
    faces and sorted whole polygons rather than pixels."""
    image = np.ones((pixels, pixels, 3))
    meshes = {c: s for c, s in meshes.items() if len(s.faces)}
    if not meshes:
        return image
    backward = np.asarray(towards_camera, dtype=float)
    backward /= np.linalg.norm(backward)
    right = np.cross((0.0, 0.0, 1.0), backward)
    if np.linalg.norm(right) < 1e-6:  # seen from straight above or below: anterior up
        right = np.cross((0.0, 1.0, 0.0), backward)
    right /= np.linalg.norm(right)
    up = np.cross(backward, right)
    vertices = np.concatenate([s.vertices for s in meshes.values()])
    normals = np.concatenate([_vertex_normals(s) for s in meshes.values()])
    classes = np.repeat(list(meshes), [len(s.vertices) for s in meshes.values()])
    x, y, depth = vertices @ right, vertices @ up, -(vertices @ backward)  # depth: small = near
    extent = max(1.04 * max(np.ptp(x), np.ptp(y)), 1e-6)
    size = extent / pixels  # mm per pixel
    spacing = np.median([_edge_length(s) for s in meshes.values()])
    splat = int(np.clip(np.ceil(1.5 * spacing / size), 2, 6))
    column = ((x - (x.min() + x.max()) / 2) / size + pixels / 2 - splat / 2).astype(int)
    row = (pixels / 2 - (y - (y.min() + y.max()) / 2) / size - splat / 2).astype(int)
    light = backward + 0.5 * up
    shade = 0.3 + 0.7 * np.abs(normals @ (light / np.linalg.norm(light)))
    palette = np.stack([class_colour(c)[:3] / 255 for c in range(max(meshes) + 1)])
    colours = palette[classes] * shade[:, None]
    offsets = [(dr, dc) for dr in range(splat) for dc in range(splat)]
    pixel = np.concatenate(
        [np.clip(row + dr, 0, pixels - 1) * pixels + np.clip(column + dc, 0, pixels - 1)
         for dr, dc in offsets]
    )  # fmt: skip
    nearest_first = np.argsort(depth)
    rank = np.empty(len(depth), dtype=np.int64)
    rank[nearest_first] = np.arange(len(depth))
    nearest = np.full(pixels * pixels, len(depth))  # z-buffer: the nearest vertex's rank
    np.minimum.at(nearest, pixel, np.tile(rank, len(offsets)))
    covered = np.flatnonzero(nearest < len(depth))
    image.reshape(-1, 3)[covered] = colours[nearest_first[nearest[covered]]]
    return image


def _vertex_normals(surface: Surface) -> np.ndarray:
    """(N, 3) unit normals: per vertex, the area-weighted sum of its faces' normals."""
    areas, normals = surface.face_areas_and_normals()
    cross = normals * areas[:, None]
    count = len(surface.vertices)
    summed = np.stack(
        [np.bincount(surface.faces.ravel(), np.repeat(cross[:, k], 3), count) for k in range(3)],
        axis=1,
    )
    return summed / np.maximum(np.linalg.norm(summed, axis=1), 1e-30)[:, None]


def _edge_length(surface: Surface) -> float:
    """Median length of the first edges of up to 2000 faces (mm)."""
    corners = surface.vertices[surface.faces[:2000]]
    return float(np.median(np.linalg.norm(corners[:, 1] - corners[:, 0], axis=1)))


def draw_preview(slices: Slices, meshes: dict[int, Surface], path: str | Path) -> None:
    """Three slices through the heart's centre (`contours.preview_slices`: input labels filled,
    reconstruction outlined) and a shaded view of the class meshes (`render_meshes`), as one
    PNG: what the pipeline hands to a thread or a host-pool process while it writes the files
    and computes the report. A `Figure` of its own, outside pyplot's global state."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 4.4), constrained_layout=True)
    colours = ListedColormap(["white", *(f"C{i}" for i in range(10))])
    for position, (title, (truth, guess)) in enumerate(slices.items()):
        axes = figure.add_subplot(1, 4, position + 1)
        axes.imshow(truth.T, origin="lower", cmap=colours, vmin=0, vmax=10, alpha=0.6)
        for class_index in np.unique(guess[guess > 0]):
            mask = np.pad(guess == class_index, 1).astype(np.float32)  # closed outlines
            for line in find_contours(mask, 0.5):
                axes.plot(line[:, 0] - 1, line[:, 1] - 1, color=f"C{class_index - 1}", lw=1.2)
        inside = np.argwhere((truth > 0) | (guess > 0))
        if len(inside):  # the heart's box on the slice, square, with a margin
            middle = (inside.min(axis=0) + inside.max(axis=0)) / 2
            half = 0.55 * float(np.ptp(inside, axis=0).max()) + 5
            axes.set_xlim(middle[0] - half, middle[0] + half)
            axes.set_ylim(middle[1] - half, middle[1] + half)
        axes.set(title=f"{title}: input filled, reconstruction outlined")
        axes.set_xticks([])
        axes.set_yticks([])
    view = figure.add_subplot(1, 4, 4)
    view.imshow(render_meshes(meshes), interpolation="antialiased")
    view.set_title("meshes: anterior view (RAS+), superior up")
    view.set_axis_off()
    figure.savefig(path, dpi=80)
