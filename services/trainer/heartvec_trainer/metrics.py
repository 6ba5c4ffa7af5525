"""Validation metrics: per-class IoU of the SDF sign, and the loss terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from heartvec.labels import CLASS_NAMES
from heartvec_trainer.config import TrainConfig
from heartvec_trainer.losses import training_loss


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: DataLoader[dict[str, torch.Tensor]],
    config: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> dict[str, Any]:
    """Sign IoU per class and mean loss terms over every shape of `loader`.

    `iou_vol` is the volumetric IoU (uniform volume points: the measure 3DShape2VecSet reports);
    `iou_near` the IoU on near-surface points, a much harsher measure of sub-millimetre surface
    placement; `iou` pools both. `mean_iou` (which picks the best checkpoint) averages `iou_vol`
    over the classes present in the split; `mean_iou_near` averages `iou_near`.
    """
    model.eval()
    classes = len(CLASS_NAMES)
    intersection = {kind: torch.zeros(classes) for kind in ("vol", "near")}
    union = {kind: torch.zeros(classes) for kind in ("vol", "near")}
    totals: dict[str, float] = {}
    batches = 0
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            loss, terms, predictions = training_loss(model, batch, config)
            for kind, predicted in predictions.items():
                sdf = batch[f"{kind}_sdf"]
                present = batch["class_present"].unsqueeze(1)  # (B, 1, C)
                true_inside = (sdf < 0) & present
                predicted_inside = (predicted < 0) & present
                intersection[kind] += (true_inside & predicted_inside).sum(dim=(0, 1)).cpu()
                union[kind] += (true_inside | predicted_inside).sum(dim=(0, 1)).cpu()
        for name, value in {"loss": loss.detach(), **terms}.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        batches += 1
    model.train()
    per_class: dict[str, dict[str, float]] = {}
    for index, name in enumerate(CLASS_NAMES):
        both = intersection["vol"][index] + intersection["near"][index]
        either = union["vol"][index] + union["near"][index]
        if either > 0:
            per_class[name] = {
                "iou": float(both / either),
                "iou_vol": float(intersection["vol"][index] / union["vol"][index].clamp(min=1)),
                "iou_near": float(intersection["near"][index] / union["near"][index].clamp(min=1)),
            }
    volume_ious = [v["iou_vol"] for v in per_class.values()]
    near_ious = [v["iou_near"] for v in per_class.values()]
    return {
        "mean_iou": sum(volume_ious) / len(volume_ious) if volume_ious else 0.0,
        "mean_iou_near": sum(near_ious) / len(near_ious) if near_ious else 0.0,
        "per_class": per_class,
        **{name: total / max(batches, 1) for name, total in totals.items()},
        "shapes": len(loader.dataset),  # type: ignore[arg-type]
    }
