"""Prepared `.npz` samples -> training tensors, with deterministic per-(epoch, item) draws."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from heartvec.errors import InputError
from heartvec.model.sampling import balanced_surface_subsample, class_members
from heartvec_trainer.config import TrainConfig


def read_split(data_dir: Path, split: str) -> list[Path]:
    """The `.npz` files listed in DATA_DIR/{split}.csv (written by `heartvec split`)."""
    listing = data_dir / f"{split}.csv"
    if not listing.is_file():
        raise InputError(listing, f"no {split} split: run `heartvec split {data_dir}` first")
    with listing.open() as f:
        names = [row["file"] for row in csv.DictReader(f)]
    files = [data_dir / name for name in names]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise InputError(listing, f"lists files that do not exist: {missing[:3]}")
    if not files:
        raise InputError(listing, f"the {split} split is empty")
    return files


def normalization_of(files: list[Path]) -> dict[str, float | None]:
    """How the files were normalized: one fixed `scale_mm` for all, or None ('fit' per file).

    Stored in checkpoints so reconstruction puts new volumes in the same frame.
    """
    scales = set()
    for path in files[:50]:
        with np.load(path) as sample:
            scales.add(round(float(sample["scale"]), 4))
    return {"scale_mm": scales.pop() if len(scales) == 1 else None}


@dataclass(frozen=True)
class _Sample:
    """A prepared file's arrays, with the index sets its draws pick from (computed once)."""

    arrays: dict[str, np.ndarray]
    surface_members: list[np.ndarray]  # `class_members` of the surface labels
    vol_sides: tuple[np.ndarray, np.ndarray]  # volume points inside any class, outside all
    near_members: list[np.ndarray] | None  # near points by nearest class, when balanced

    @property
    def nbytes(self) -> int:
        index_sets = [*self.surface_members, *self.vol_sides, *(self.near_members or [])]
        return sum(a.nbytes for a in [*self.arrays.values(), *index_sets])


class PreparedShapes(Dataset[dict[str, torch.Tensor]]):
    """One item per prepared volume: encoder inputs and query points with their SDF.

    Every random draw of item i in epoch e comes from a generator seeded with (seed, e, i), so
    a resumed run sees exactly the data the uninterrupted run would have. The epoch travels in
    the index (`EpochTagged`: e * len + i), so DataLoader workers can stay alive across epochs
    and still draw each epoch's own points; a plain index i < len draws as epoch 0.

    Files read are kept in memory, with the index sets their draws pick from, up to
    `config.cache_mb` per process (each DataLoader worker has its own): reading and indexing a
    file again is most of the time of making an item.

    Args:
        files: `.npz` files in the training format.
        num_inputs: surface points for the encoder (drawn evenly per class).
        config: point counts per kind.
        evaluation: keep every volume and near point of the file (uniform volume points, as a
            volumetric IoU needs) instead of drawing `config`'s counts, balanced for training.
    """

    def __init__(
        self, files: list[Path], num_inputs: int, config: TrainConfig, evaluation: bool = False
    ) -> None:
        self.files = files
        self.num_inputs = num_inputs
        self.config = config
        self.evaluation = evaluation
        self._cache: dict[Path, _Sample] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.files)

    def _sample(self, path: Path) -> _Sample:
        sample = self._cache.get(path)
        if sample is not None:
            return sample
        with np.load(path) as stored:
            arrays = {key: stored[key] for key in _ITEM_ARRAYS}
        balanced_near = self.config.near_balance > 0 and not self.evaluation
        inside = arrays["vol_sdf"].min(axis=1) < 0
        sample = _Sample(
            arrays,
            class_members(arrays["surface_labels"]),
            (np.flatnonzero(inside).astype(np.int32), np.flatnonzero(~inside).astype(np.int32)),
            _nearest_members(arrays["near_sdf"], arrays["class_present"])
            if balanced_near
            else None,
        )
        if self._cached_bytes + sample.nbytes <= self.config.cache_mb * 2**20:
            self._cache[path] = sample
            self._cached_bytes += sample.nbytes
        return sample

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        config = self.config
        epoch, index = divmod(key, len(self.files))
        rng = np.random.default_rng([config.seed, epoch, index])
        sample = self._sample(self.files[index])
        surface_points = sample.arrays["surface_points"]
        surface_labels = sample.arrays["surface_labels"]
        vol_points, vol_sdf = sample.arrays["vol_points"], sample.arrays["vol_sdf"]
        near_points, near_sdf = sample.arrays["near_points"], sample.arrays["near_sdf"]
        present = sample.arrays["class_present"]
        members = sample.surface_members
        inputs, input_labels = balanced_surface_subsample(
            surface_points, surface_labels, self.num_inputs, rng, members
        )
        loss_points, loss_labels = balanced_surface_subsample(
            surface_points, surface_labels, config.surface_points, rng, members
        )
        if self.evaluation:
            vol_index, near_index = np.arange(len(vol_points)), np.arange(len(near_points))
        else:
            vol_index = _balanced_choice(sample.vol_sides, config.vol_points, rng)
            near_index = _near_choice(len(near_sdf), sample.near_members, config, rng)
        if config.augment and not self.evaluation:
            rotation, scale, shift = _random_similarity(config, rng)
            matrix = (rotation * scale).T
            inputs, loss_points = inputs @ matrix + shift, loss_points @ matrix + shift
            vol_points, near_points = (
                vol_points[vol_index] @ matrix + shift,
                near_points[near_index] @ matrix + shift,
            )
            vol_sdf, near_sdf = vol_sdf[vol_index] * scale, near_sdf[near_index] * scale
            vol_index, near_index = np.arange(len(vol_points)), np.arange(len(near_points))
            inputs, loss_points = inputs.astype(np.float32), loss_points.astype(np.float32)
            vol_points, near_points = vol_points.astype(np.float32), near_points.astype(np.float32)
            vol_sdf, near_sdf = vol_sdf.astype(np.float32), near_sdf.astype(np.float32)
        return {
            "inputs": torch.from_numpy(inputs),  # (N, 3)
            "input_labels": torch.from_numpy(input_labels),  # (N,)
            "vol_points": torch.from_numpy(vol_points[vol_index]),  # (V, 3)
            "vol_sdf": torch.from_numpy(vol_sdf[vol_index]),  # (V, C)
            "near_points": torch.from_numpy(near_points[near_index]),  # (Mn, 3)
            "near_sdf": torch.from_numpy(near_sdf[near_index]),  # (Mn, C)
            "surface_points": torch.from_numpy(loss_points),  # (S, 3)
            "surface_labels": torch.from_numpy(loss_labels),  # (S,)
            "class_present": torch.from_numpy(present.copy()),  # (C,)
        }


_ITEM_ARRAYS = (
    "surface_points",
    "surface_labels",
    "vol_points",
    "vol_sdf",
    "near_points",
    "near_sdf",
    "class_present",
)


class EpochTagged(Sampler[int]):
    """Wraps a sampler with `set_epoch` (DistributedSampler) so each index it yields carries
    the epoch of its draws: `draw_epoch * size + index`, decoded by `PreparedShapes`.

    With `repeats` > 1 an epoch is that many passes, pass r of epoch e drawing as epoch
    e * repeats + r (its own shuffle and points). The sampler lives in the main process, so
    persistent DataLoader workers (which keep their own copy of the dataset) still see the
    current epoch, and no worker is re-spawned per epoch.
    """

    def __init__(self, sampler: Any, size: int, repeats: int = 1) -> None:
        self.sampler = sampler
        self.size = size
        self.repeats = repeats
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Yield epoch `epoch`'s indices, less its first `skip` (a run resumed inside it)."""
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._indices(), self.skip, None)

    def _indices(self) -> Iterator[int]:
        for repeat in range(self.repeats):
            draw_epoch = self.epoch * self.repeats + repeat
            self.sampler.set_epoch(draw_epoch)
            offset = draw_epoch * self.size
            yield from (offset + int(index) for index in self.sampler)

    def __len__(self) -> int:
        return max(0, len(self.sampler) * self.repeats - self.skip)


def _random_similarity(
    config: TrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, float, np.ndarray]:
    """A rotation (3, 3) about a random axis by up to `augment_rotation_deg`, a scale in
    [1 - augment_scale, 1 + augment_scale] and a shift (3,) of up to `augment_shift` per axis:
    all keep SDF exact (distances scale with the scale, a shift moves them along). No shift is
    drawn where it is 0, so the draws of runs from before it are unchanged."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-config.augment_rotation_deg, config.augment_rotation_deg))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    scale = float(rng.uniform(1 - config.augment_scale, 1 + config.augment_scale))
    shift = (
        rng.uniform(-config.augment_shift, config.augment_shift, 3)
        if config.augment_shift > 0
        else np.zeros(3)
    )
    return rotation, scale, shift


def _nearest_members(near_sdf: np.ndarray, present: np.ndarray) -> list[np.ndarray]:
    """For each present class (increasing), the near points whose nearest surface is its own
    (all points for a class that is nearest to none)."""
    nearest = np.abs(near_sdf).argmin(axis=1)
    groups = []
    for channel in np.flatnonzero(present):
        members = np.flatnonzero(nearest == channel)
        groups.append((members if len(members) else np.arange(len(near_sdf))).astype(np.int32))
    return groups


def _near_choice(
    total: int,
    nearest_members: list[np.ndarray] | None,
    config: TrainConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of `config.near_points` of the `total` near points: a `config.near_balance`
    share drawn evenly over the present classes (`nearest_members`: the points whose nearest
    surface is each class's), the rest uniformly.

    Near points follow surface area, so a thin vein gets a few percent of them against a
    chamber's third; the balanced share gives every class the same number.
    """
    balanced = round(config.near_points * config.near_balance)
    uniform = rng.choice(total, config.near_points - balanced, replace=False)
    if balanced == 0:
        return uniform
    assert nearest_members is not None, "balanced near points need the members per class"
    shares = np.full(len(nearest_members), balanced // len(nearest_members))
    shares[: balanced % len(nearest_members)] += 1
    picked = [uniform]
    for members, share in zip(nearest_members, shares, strict=True):
        picked.append(rng.choice(members, size=share, replace=len(members) < share))
    return rng.permutation(np.concatenate(picked))


def _balanced_choice(
    sides: tuple[np.ndarray, np.ndarray], count: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices: half from `sides[0]` (inside), half from `sides[1]` (outside), with replacement
    when one side is short; all points when one side is empty."""
    total = sum(len(side) for side in sides)
    halves = []
    for members, share in ((sides[0], count // 2), (sides[1], count - count // 2)):
        if len(members) == 0:
            members = np.arange(total)
        halves.append(rng.choice(members, size=share, replace=len(members) < share))
    return rng.permutation(np.concatenate(halves))


def end_workers(*loaders: DataLoader[Any]) -> None:
    """End the loaders' persistent worker processes now, in order. A run stopped inside an epoch
    (time limit, signal) leaves its iterator suspended with workers alive; left to the
    interpreter's exit, multiprocessing terminates them and torch's SIGCHLD handler reports
    "DataLoader worker ... is killed by signal: Terminated" with a traceback, after a run that
    ended well."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # persistent_workers keeps it here
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader._iterator = None
