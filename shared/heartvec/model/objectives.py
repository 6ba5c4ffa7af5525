"""Loss terms that training and reconstruction's refinement share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sign_loss(predicted: torch.Tensor, sdf: torch.Tensor, temperature: float) -> torch.Tensor:
    """Binary cross-entropy of the predicted occupancy against the true inside/outside.

    Dice and IoU count signs, and L1 on the truncated SDF does not: this term is what makes a
    fit get the signs right (training's `weight_sign`, refinement's `sign_weight`).

    Args:
        predicted: (B, Q, C) predictions in the training target's units.
        sdf: (B, Q, C) true SDF (only its sign is used).
        temperature: prediction units per logit unit: the occupancy is
            sigmoid(-predicted / temperature).
    """
    inside = (sdf < 0).to(predicted.dtype)
    return F.binary_cross_entropy_with_logits(-predicted / temperature, inside)
