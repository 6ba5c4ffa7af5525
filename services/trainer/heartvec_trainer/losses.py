"""The training objective: L1 on truncated per-class SDF at volume, near and surface points,
an eikonal term by finite differences, and (when `weight_sign` > 0) a sign term.

Why a sign term: Dice and IoU count signs, and L1 on the truncated SDF does not; two warm
starts of the bundled checkpoint lowered the validation loss and lost IoU (BENCHMARKS.md). The
sign term is binary cross-entropy of the occupancy `sigmoid(-prediction / sign_temperature)`
against `true SDF < 0` at volume and near points, what occupancy networks (and the first
3DShape2VecSet) train on. Its effect alone is not measured: the run that used it (the bundled
checkpoint's second stage) gained on the large structures and lost on the thin veins, whose
inside points are rare in an unweighted mean.

Why finite differences: an autograd eikonal term needs a double backward through every
attention layer, which the fused SDPA kernels do not support; attention written by hand to get
it takes tens of GB at a batch of two. Here the eikonal points are six
extra decoder queries each (+-h along x, y, z) in the same forward pass: ordinary backward,
fused kernels everywhere, and the cost is a few thousand more cross-attention queries.
The difference quotient measures the gradient averaged over the step (0.005 = 0.5 mm at the
default scale), which suits a regulariser; its error against autograd falls as step^2
(tests/test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heartvec.model.objectives import sign_loss
from heartvec_trainer.config import TrainConfig

_AXES = torch.eye(3)


def sdf_target(sdf: torch.Tensor, truncation: float | None) -> torch.Tensor:
    """Training target: clamp(sdf, +-t) / t, or the raw SDF when truncation is None."""
    if truncation is None:
        return sdf
    return sdf.clamp(-truncation, truncation) / truncation


def eikonal_queries(points: torch.Tensor, step: float) -> torch.Tensor:
    """(B, K, 3) -> (B, 6K, 3): each point shifted by +h and -h along x, y and z."""
    offsets = torch.cat([_AXES, -_AXES]).to(points) * step  # (6, 3)
    return (points[:, :, None, :] + offsets).flatten(1, 2)


def training_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], config: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weighted loss, its terms, and the predictions at volume and near points (B, *, C), for
    one batch, in one forward pass through `model`."""
    vol, near, surface = batch["vol_points"], batch["near_points"], batch["surface_points"]
    eikonal_centres = near[:, : config.eikonal_points]
    queries = torch.cat(
        [vol, near, surface, eikonal_queries(eikonal_centres, config.eikonal_step)], dim=1
    )
    predicted = model(batch["inputs"], batch["input_labels"], queries).float()  # (B, Q, C)
    sizes = [vol.shape[1], near.shape[1], surface.shape[1], 6 * eikonal_centres.shape[1]]
    pred_vol, pred_near, pred_surface, pred_shifted = predicted.split(sizes, dim=1)

    terms = {
        "vol": F.l1_loss(pred_vol, sdf_target(batch["vol_sdf"], config.truncation)),
        "near": F.l1_loss(pred_near, sdf_target(batch["near_sdf"], config.truncation)),
    }
    if config.weight_sign > 0:
        terms["sign"] = sign_loss(
            torch.cat([pred_vol, pred_near], dim=1),
            torch.cat([batch["vol_sdf"], batch["near_sdf"]], dim=1),
            config.sign_temperature,
        )
    own_class = batch["surface_labels"].unsqueeze(-1) - 1  # (B, S, 1)
    terms["surface"] = pred_surface.gather(-1, own_class).abs().mean()
    terms["eikonal"] = _eikonal(pred_shifted, batch["near_sdf"][:, : config.eikonal_points], config)
    loss = (
        config.weight_vol * terms["vol"]
        + config.weight_near * terms["near"]
        + config.weight_surface * terms["surface"]
        + config.weight_eikonal * terms["eikonal"]
    )
    if "sign" in terms:
        loss = loss + config.weight_sign * terms["sign"]
    terms = {name: value.detach() for name, value in terms.items()}
    return loss, terms, {"vol": pred_vol.detach(), "near": pred_near.detach()}


def _eikonal(shifted: torch.Tensor, sdf: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Mean (|grad| - target)^2 over channels whose true SDF is inside the truncation band.

    Args:
        shifted: (B, 6K, C) predictions at the shifted points (+x, +y, +z, -x, -y, -z per point).
        sdf: (B, K, C) true SDF at the unshifted points.
    """
    batch, _, classes = shifted.shape
    shifted = shifted.view(batch, -1, 6, classes)  # (B, K, 6, C)
    gradient = (shifted[:, :, :3] - shifted[:, :, 3:]) / (2 * config.eikonal_step)  # (B, K, 3, C)
    norm = gradient.norm(dim=2)  # (B, K, C)
    band = config.truncation if config.truncation is not None else float("inf")
    # targets are sdf / truncation, so their gradient norm is 1 / truncation inside the band
    expected = 1.0 / config.truncation if config.truncation is not None else 1.0
    mask = (sdf.abs() < band).to(norm.dtype)
    # mean per shape, then over shapes: a batch split across DDP ranks averages to the same
    error = ((norm - expected) / expected).pow(2) * mask
    per_shape = error.sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1)
    return per_shape.mean()
