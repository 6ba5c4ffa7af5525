"""Latent refinement: gradient steps so the decoder fits the input's own surface and SDF samples
(the model's weights stay frozen). For inputs unlike the training data.

Two targets: the latent set itself (the bottleneck code, `latents`), or the processed latent set
the decoder attends to (`context`: the self-attention stack's output, 256 x width instead of
256 x latent_dim numbers). The latent set refines inside what the processor can express, which
levels off after a few steps; the context is eight times freer and a step skips the processor's
forward and backward, so it fits unseen inputs better (bench/refinement.py).

The fit loss is L1 on the truncated SDF plus a sign term (binary cross-entropy of
sigmoid(-prediction / SIGN_TEMPERATURE) against "inside"), weighted well above the L1: Dice and
the label volume depend on the signs alone, and L1 spends its steps on distances far from the
zero level (the weights measured: bench/refinement.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import Normalization
from heartvec.reconstruction import defaults
from heartvec.reconstruction.refine_steps import (
    Adam,
    TensorSteps,
    fit_loss,
    minibatch,
    minibatch_indices,
)
from heartvec.reconstruction.refine_targets import RefinementTargets, start_targets
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

log = logging.getLogger(__name__)

TARGETS = ("context", "latents")
STEP_PRECISIONS = ("fp32", "bf16")
STEP_MODES = ("auto", "eager", "tensor", "graph")


@dataclass(frozen=True, kw_only=True)
class RefineSettings:
    """How `refine_latents` fits.

    Args:
        steps: Adam steps (0: none).
        learning_rate: the first step's size.
        final_lr: the last step's size as a fraction of the first, reached along a cosine (1:
            constant).
        target: what the steps change: 'context' or 'latents' (the module's docstring).
        sign_weight: weight of the sign term in the fit loss (`fit_loss`; 0: L1 only).
        points_per_step: fit points a step draws, a third on the surface.
        class_balance: the share of the fit's surface points split evenly among the classes,
            the rest by area (`refine_targets.fit_surface_points`), in [0, 1].
        target_points: near-surface and as many volume points drawn from the input with their
            SDF, and twice as many surface points, to fit (the steps' minibatches come from
            them); a quarter as many more of each kind are drawn and held out.
        near_share: the share of a step's SDF queries drawn from the near-surface points, the
            rest from the volume points, in [0, 1].
        step_mode: 'eager' (a Python loop of `Adam` steps), 'tensor' or 'graph'
            (`TensorSteps`; 'graph' on a GPU only), 'auto': 'graph' on a GPU, else 'eager'.
        precision: of the steps' forward passes: 'fp32' or 'bf16' (autocast; the fitted
            tensor, Adam's state and the held-out measure stay fp32). bf16 takes 0.69x the time
            of a reconstruction on a CPU with native bf16 and fits thin veins a little less
            (`defaults`).
    """

    steps: int = defaults.REFINE_STEPS
    learning_rate: float = defaults.REFINE_LR
    final_lr: float = defaults.REFINE_FINAL_LR
    target: str = defaults.REFINE_TARGET
    sign_weight: float = defaults.REFINE_SIGN_WEIGHT
    points_per_step: int = defaults.REFINE_POINTS
    class_balance: float = defaults.REFINE_CLASS_BALANCE
    target_points: int = defaults.REFINE_TARGET_POINTS
    near_share: float = defaults.REFINE_NEAR_SHARE
    step_mode: str = "auto"
    precision: str = defaults.REFINE_PRECISION

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"refinement target {self.target!r}: expected one of {TARGETS}")
        if self.step_mode not in STEP_MODES:
            raise ValueError(
                f"refinement step mode {self.step_mode!r}: expected one of {STEP_MODES}"
            )
        if not 0.0 <= self.class_balance <= 1.0:
            raise ValueError(
                f"refinement class balance {self.class_balance}: expected a share in [0, 1]"
            )
        if self.precision not in STEP_PRECISIONS:
            raise ValueError(
                f"refinement precision {self.precision!r}: expected one of {STEP_PRECISIONS}"
            )
        if not 0.0 <= self.near_share <= 1.0:
            raise ValueError(f"refinement near share {self.near_share}: expected a share in [0, 1]")
        if self.target_points < 2:
            raise ValueError(
                f"refinement target points {self.target_points}: expected at least 2 (some fit, "
                "some held out)"
            )


def tensors(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A part of the fit data as a batch of one on `device` (the classes as integers)."""
    result = {}
    for key, array in arrays.items():
        tensor = torch.from_numpy(array)
        result[key] = (tensor.long() if key == "labels" else tensor.float())[None].to(device)
    return result


def cosine_factor(step: int, steps: int, final: float) -> float:
    """The step size of step `step` of `steps` as a fraction of the first: a cosine from 1 down
    to `final` at the last step."""
    if steps <= 1 or final == 1.0:
        return 1.0
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / (steps - 1)))


def refine_latents(
    model: VecSetAutoencoder,
    latents: torch.Tensor,
    volume: LabelVolume,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    truncation: float | None,
    rng: np.random.Generator,
    settings: RefineSettings = RefineSettings(),
    targets: RefinementTargets | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Adam on `settings.target` for `settings.steps` steps of `settings.points_per_step` fit
    points each, the step size along a cosine from `learning_rate` to `learning_rate *
    final_lr`. `targets`: the fit data (`start_targets`), else drawn with a seed from `rng`. A
    step mode that fails (a CUDA graph that cannot be captured) falls back to 'eager' with a
    warning.

    Returns:
        (latents, context, record): the latent set (refined when the target is 'latents', else
        as given), the decoder's context to decode with, and a record of the fit: the sign IoU
        per class on held-out near and volume points before and after, so the report shows what
        refinement bought.
    """
    steps, learning_rate, target = settings.steps, settings.learning_rate, settings.target
    sign_weight, step_mode = settings.sign_weight, settings.step_mode
    if step_mode == "auto":
        step_mode = "graph" if latents.device.type == "cuda" else "eager"
    dtype = torch.bfloat16 if settings.precision == "bf16" else None

    def steps_autocast() -> torch.autocast:  # no cast cache: a CUDA graph may capture it
        return torch.autocast(
            latents.device.type, dtype=dtype or torch.float32, enabled=dtype is not None,
            cache_enabled=False,
        )  # fmt: skip

    started = time.perf_counter()
    if targets is None:
        targets = start_targets(
            volume, surfaces, normalization, int(rng.integers(2**63)),
            class_balance=settings.class_balance, points=settings.target_points,
        )  # fmt: skip
    parts = targets.result()
    device = latents.device
    fit, held_out = (tensors(part, device) for part in (parts.fit, parts.held_out))
    present = torch.zeros(parts.fit["sdf"].shape[1], dtype=torch.bool)
    present[torch.tensor(list(surfaces)) - 1] = True

    def held_out_iou(context: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            _, predicted = fit_loss(model, context, held_out, truncation)
        truth, guess = held_out["sdf"][0] < 0, predicted[0].float() < 0
        result = {}
        for channel in torch.nonzero(present).flatten().tolist():
            union = (truth[:, channel] | guess[:, channel]).sum()
            both = (truth[:, channel] & guess[:, channel]).sum()
            result[volume.label_table.class_name(channel + 1)] = float(both / union.clamp(min=1))
        return result

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    latents = latents.detach()
    with torch.no_grad():
        context = model.process(latents)
    before = held_out_iou(context)
    free = (latents if target == "latents" else context).clone().requires_grad_(True)
    optimizer = Adam(free, lr=learning_rate)
    first_loss = last_loss = None  # tensors, read after the loop
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    indices = minibatch_indices(
        fit, generator, settings.points_per_step, steps, parts.fit_near, settings.near_share
    )
    with torch.no_grad():  # the fit points' embedding and attention queries, once
        prepared = model.prepare_queries(torch.cat([fit["surface"], fit["queries"]], dim=1))
    step_sizes = [
        learning_rate * cosine_factor(step, steps, settings.final_lr) for step in range(steps)
    ]
    if step_mode != "eager" and steps > 0:
        saved = free.detach().clone()
        tensor_steps = TensorSteps(
            model, free, target, fit, indices, prepared, truncation, sign_weight, optimizer,
            step_sizes,
        )  # fmt: skip
        try:
            with steps_autocast():
                first_loss, last_loss = tensor_steps.run(step_mode)
        except RuntimeError as error:  # a graph that could not be captured
            log.warning("refinement in %s mode failed (%s): eager steps instead", step_mode, error)
            with torch.no_grad():
                free.copy_(saved)
            free.grad = None
            optimizer = Adam(free, lr=learning_rate)
            step_mode = "eager"
    if step_mode == "eager":
        for step in range(steps):  # nothing here waits for the device
            optimizer.lr = step_sizes[step]
            data, step_prepared = minibatch(fit, indices, step, prepared)
            with steps_autocast():
                current = model.process(free) if target == "latents" else free
                loss, _ = fit_loss(model, current, data, truncation, sign_weight, step_prepared)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last_loss = loss.detach()
            first_loss = last_loss if first_loss is None else first_loss
    free = free.detach()
    if target == "latents":
        latents = free
        with torch.no_grad():
            context = model.process(latents)
    else:
        context = free
    after = held_out_iou(context)
    return (
        latents,
        context,
        {
            "steps": steps,
            "target": target,
            "learning_rate": learning_rate,
            "sign_weight": sign_weight,
            "points_per_step": settings.points_per_step,
            "class_balance": settings.class_balance,
            "target_points": settings.target_points,
            "near_share": settings.near_share,
            "precision": "bf16" if dtype is not None else "fp32",
            "final_lr": settings.final_lr,
            "step_mode": step_mode,
            "loss_first": first_loss.item() if first_loss is not None else None,
            "loss_last": last_loss.item() if last_loss is not None else None,
            "held_out_iou_before": before,
            "held_out_iou_after": after,
            "mean_held_out_iou_before": float(np.mean(list(before.values()))),
            "mean_held_out_iou_after": float(np.mean(list(after.values()))),
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
