"""The pictures of a reconstruction: input vs reconstruction on three slices, and the meshes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from heartvec.reconstruction.export import class_colour
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

_MAX_FACES = 5000  # per class in the 3-D view: enough to read the shape, quick to draw (1 s)


def render_preview(
    volume: LabelVolume, reconstructed: np.ndarray, meshes: dict[int, Surface], path: Path
) -> None:
    """Three slices through the heart's centre (input labels filled, reconstruction outlined)
    and a 3-D view of the class meshes, as one PNG.

    A `Figure` of its own, outside pyplot's global state: the pipeline renders it on a thread
    while it computes the report."""
    figure = Figure(figsize=(16, 5), constrained_layout=True)
    colours = ListedColormap(["white", *(f"C{i}" for i in range(10))])
    centre = np.round(np.argwhere(volume.classes > 0).mean(axis=0)).astype(int)
    slices = {
        "axis 0": (volume.classes[centre[0]], reconstructed[centre[0]]),
        "axis 1": (volume.classes[:, centre[1]], reconstructed[:, centre[1]]),
        "axis 2": (volume.classes[:, :, centre[2]], reconstructed[:, :, centre[2]]),
    }
    for position, (title, (truth, guess)) in enumerate(slices.items()):
        axes = figure.add_subplot(1, 4, position + 1)
        axes.imshow(truth.T, origin="lower", cmap=colours, vmin=0, vmax=10, alpha=0.6)
        for class_index in np.unique(guess[guess > 0]):
            axes.contour(
                (guess == class_index).T.astype(float),
                levels=[0.5],
                colors=[f"C{class_index - 1}"],
                linewidths=1.2,
            )
        axes.set(title=f"{title}: input filled, reconstruction outlined")
        axes.set_xticks([])
        axes.set_yticks([])
    view = figure.add_subplot(1, 4, 4, projection="3d")
    rng = np.random.default_rng(0)
    for class_index, surface in meshes.items():
        faces = surface.faces
        if len(faces) > _MAX_FACES:
            faces = faces[rng.choice(len(faces), _MAX_FACES, replace=False)]
        colour = class_colour(class_index) / 255
        view.add_collection3d(
            Poly3DCollection(surface.vertices[faces], facecolor=colour, edgecolor="none", alpha=0.9)
        )
    if meshes:
        every = np.concatenate([s.vertices for s in meshes.values()])
        low, high = every.min(axis=0), every.max(axis=0)
        half = float(np.max(high - low)) / 2
        for axis, middle in zip("xyz", (low + high) / 2, strict=True):
            getattr(view, f"set_{axis}lim")(middle - half, middle + half)
    view.set(title="meshes (world mm, RAS+)", xlabel="x (R)", ylabel="y (A)", zlabel="z (S)")
    figure.savefig(path, dpi=80)
