"""Choosing which input points become latent queries, and which surface points go in."""

from __future__ import annotations

import numpy as np
import torch


def farthest_point_sampling(points: torch.Tensor, count: int) -> torch.Tensor:
    """Batched farthest point sampling in plain torch (no compiled extension).

    Starts from each cloud's first point (inputs arrive shuffled), then repeatedly takes the
    point farthest from those already chosen.

    Args:
        points: (B, N, 3).
        count: points to choose, <= N.

    Returns:
        long (B, count) indices into N.
    """
    batch, num_points, _ = points.shape
    chosen = torch.empty(batch, count, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, num_points), float("inf"), device=points.device)
    farthest = torch.zeros(batch, dtype=torch.long, device=points.device)
    rows = torch.arange(batch, device=points.device)
    for i in range(count):
        chosen[:, i] = farthest
        centre = points[rows, farthest].unsqueeze(1)  # (B, 1, 3)
        nearest = torch.minimum(nearest, ((points - centre) ** 2).sum(-1))  # (B, N)
        farthest = nearest.argmax(dim=-1)
    return chosen


def class_members(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class present in `labels` (S,), in increasing class order: what
    `balanced_surface_subsample` draws from (a training sample keeps them, drawn from often)."""
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] - 1))
    return [members.astype(np.int32) for members in np.split(order, starts[1:])]


def balanced_pick(members: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices drawn evenly from each group of `members` (with replacement from a group
    with too few), shuffled."""
    shares = np.full(len(members), count // len(members))
    shares[: count - shares.sum()] += 1
    picked = [
        rng.choice(group, size=share, replace=len(group) < share)
        for group, share in zip(members, shares, strict=True)
    ]
    return rng.permutation(np.concatenate(picked))


def balanced_surface_subsample(
    points: np.ndarray,
    labels: np.ndarray,
    count: int,
    rng: np.random.Generator,
    members: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`count` surface points drawn evenly per class present, so thin vessels are not drowned
    by the chambers; shuffled. Classes with too few points are drawn with replacement.

    Args:
        points: (S, 3) surface samples; labels: (S,) class index 1..C.
        members: `class_members(labels)`, when already known.

    Returns:
        points (count, 3) float32 and labels (count,) int64.
    """
    order = balanced_pick(class_members(labels) if members is None else members, count, rng)
    return points[order].astype(np.float32), labels[order].astype(np.int64)
