"""Validation metrics: per-class IoU of the SDF sign, and L1 terms, on every point of a split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from heartvec.labels import CLASS_NAMES
from heartvec.model.vecset import VecSetAutoencoder
from heartvec_trainer.config import TrainConfig
from heartvec_trainer.losses import sdf_target

QUERY_CHUNK = 32_768
"""Decoder queries per forward pass: bounds memory whatever the number of points."""


def predict_sdf(
    model: VecSetAutoencoder, context: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """Per-class SDF (B, Q, C) at (B, Q, 3) points, decoded in chunks of QUERY_CHUNK."""
    parts = [model.decode(context, chunk).float() for chunk in points.split(QUERY_CHUNK, dim=1)]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def evaluate_model(
    model: VecSetAutoencoder,
    loader: DataLoader[dict[str, torch.Tensor]],
    config: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Sign IoU per class and mean L1 terms over every shape and point of `loader`.

    `iou_vol` is the volumetric IoU (all uniform volume points: the measure 3DShape2VecSet
    reports); `iou_near` the IoU on near-surface points, a much harsher measure of
    sub-millimetre surface placement; `iou` pools both. A class counts in the shapes where it is
    present. `mean_iou` (which picks the best checkpoint) averages `iou_vol` over the classes
    present in the split; `mean_iou_near` averages `iou_near`; `heart_iou` is the volumetric IoU
    of the whole heart (inside any class), the single-shape measure of 3DShape2VecSet. `loss` is
    the weighted sum of the L1 terms (no eikonal term).

    Under DDP each rank evaluates its own shapes and `reduce` (an all-reduce sum) combines the
    counts, so every rank returns the metrics of the whole split.
    """
    model.eval()
    classes = len(CLASS_NAMES)
    intersection = {kind: torch.zeros(classes) for kind in ("vol", "near")}
    union = {kind: torch.zeros(classes) for kind in ("vol", "near")}
    totals = {"vol": 0.0, "near": 0.0, "surface": 0.0}
    heart_both = heart_either = 0
    shapes = 0
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        present = batch["class_present"].unsqueeze(1)  # (B, 1, C)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            context = model.process(model.encode(batch["inputs"], batch["input_labels"]))
            for kind in ("vol", "near"):
                predicted = predict_sdf(model, context, batch[f"{kind}_points"])  # (B, Q, C)
                sdf = batch[f"{kind}_sdf"]
                true_inside = (sdf < 0) & present
                predicted_inside = (predicted < 0) & present
                intersection[kind] += (true_inside & predicted_inside).sum(dim=(0, 1)).cpu()
                union[kind] += (true_inside | predicted_inside).sum(dim=(0, 1)).cpu()
                if kind == "vol":  # the whole heart: inside any class
                    true_heart, predicted_heart = true_inside.any(-1), predicted_inside.any(-1)
                    heart_both += int((true_heart & predicted_heart).sum())
                    heart_either += int((true_heart | predicted_heart).sum())
                error = (predicted - sdf_target(sdf, config.truncation)).abs().mean(dim=(1, 2))
                totals[kind] += float(error.sum())
            on_surface = predict_sdf(model, context, batch["surface_points"])
            own = on_surface.gather(-1, batch["surface_labels"].unsqueeze(-1) - 1)
            totals["surface"] += float(own.abs().mean(dim=(1, 2)).sum())
        shapes += len(batch["inputs"])
    model.train()
    if reduce is not None:
        scalars = [totals["vol"], totals["near"], totals["surface"], heart_both, heart_either,
                   shapes]  # fmt: skip
        packed = torch.cat([intersection["vol"], intersection["near"], union["vol"],
                            union["near"], torch.tensor(scalars)]).to(device)  # fmt: skip
        packed = reduce(packed.double()).cpu()
        parts = packed.split([classes] * 4 + [6])
        intersection = {"vol": parts[0], "near": parts[1]}
        union = {"vol": parts[2], "near": parts[3]}
        scalars = parts[4].tolist()
        totals = {"vol": scalars[0], "near": scalars[1], "surface": scalars[2]}
        heart_both, heart_either, shapes = int(scalars[3]), int(scalars[4]), int(scalars[5])
    per_class: dict[str, dict[str, float]] = {}
    for index, name in enumerate(CLASS_NAMES):
        either = union["vol"][index] + union["near"][index]
        if either > 0:
            both = intersection["vol"][index] + intersection["near"][index]
            per_class[name] = {
                "iou": float(both / either),
                "iou_vol": float(intersection["vol"][index] / union["vol"][index].clamp(min=1)),
                "iou_near": float(intersection["near"][index] / union["near"][index].clamp(min=1)),
            }
    terms = {name: total / max(shapes, 1) for name, total in totals.items()}
    loss = (
        config.weight_vol * terms["vol"]
        + config.weight_near * terms["near"]
        + config.weight_surface * terms["surface"]
    )
    volume_ious = [v["iou_vol"] for v in per_class.values()]
    near_ious = [v["iou_near"] for v in per_class.values()]
    return {
        "mean_iou": sum(volume_ious) / len(volume_ious) if volume_ious else 0.0,
        "mean_iou_near": sum(near_ious) / len(near_ious) if near_ious else 0.0,
        "heart_iou": heart_both / max(heart_either, 1),
        "per_class": per_class,
        "loss": loss,
        **terms,
        "shapes": shapes,
    }
