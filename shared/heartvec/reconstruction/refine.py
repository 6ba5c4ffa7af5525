"""Latent refinement: gradient steps so the decoder fits the input's own surface and SDF samples
(the model's weights stay frozen). For inputs unlike the training data.

Two targets: the latent set itself (the bottleneck code, `latents`), or the processed latent set
the decoder attends to (`context`: the self-attention stack's output, 256 x width instead of
256 x latent_dim numbers). The latent set refines inside what the processor can express, which
levels off after a few steps; the context is eight times freer and a step skips the processor's
forward and backward. On unseen phantoms and the real heart the context fits better (150 steps:
about twice the old 20 latent-set steps' time; bench/refinement.py, BENCHMARKS.md).

The fit loss is L1 on the truncated SDF plus a sign term (binary cross-entropy of
sigmoid(-prediction / SIGN_TEMPERATURE) against "inside"), weighted well above the L1: Dice and
the label volume depend on the signs alone, and L1 spends its steps on distances far from the
zero level. On six unseen phantoms (bench/refinement.py, 150 context steps) the sign term
raised mean Dice from 0.696 (L1 only) to 0.712 / 0.740 / 0.820 / 0.884 / 0.880 / 0.869 at
weights 1 / 3 / 10 / 30 / 100 / 300.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch

from heartvec.model.objectives import sign_loss
from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import Normalization
from heartvec.reconstruction import defaults
from heartvec.reconstruction.hostwork import RefinementTargets
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

log = logging.getLogger(__name__)

POINTS = 8192  # of each kind: surface, near, volume; half fit, half held out to measure
TARGETS = ("context", "latents")


TARGET_MARGIN = 0.05  # normalized units of room around the surfaces for the volume points


def start_targets(
    volume: LabelVolume,
    surfaces: dict[int, Surface],
    normalization: Normalization,
    seed: int | Sequence[int],
    pool: ProcessPoolExecutor | None = None,
) -> RefinementTargets:
    """The refinement's surface points with classes and near + volume points with exact
    per-class SDF (`hostwork.RefinementTargets`, POINTS of each kind), their distances started
    at once, a class per job: on `pool` (the pipeline's host pool), else on threads, while the
    device encodes."""
    low, high = normalization.bounds(surfaces)
    room = TARGET_MARGIN
    return RefinementTargets(
        volume, surfaces, normalization, low - room, high + room, POINTS, seed, pool
    )


SIGN_TEMPERATURE = 0.1  # as training's `sign_temperature`, in target units


Prepared = tuple[torch.Tensor, torch.Tensor]
"""`VecSetAutoencoder.prepare_queries` of a set of points."""


def _loss(
    model: VecSetAutoencoder,
    context: torch.Tensor,
    data: dict[str, torch.Tensor],
    truncation: float | None,
    sign_weight: float = 0.0,
    prepared: Prepared | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 of the SDF at the surface (own class, x10) and at the queries (every class), plus,
    with `sign_weight`, the training's sign term: binary cross-entropy of
    sigmoid(-prediction / SIGN_TEMPERATURE) against "inside" at the queries, because Dice
    counts signs and L1 does not. One decoder pass for both kinds of points (it decodes each
    point on its own; one pass projects the context once and halves the kernel launches);
    `prepared`: the decoder's work on those points (surface, then queries) that does not
    depend on the context, done beforehand."""
    surface_count = data["surface"].shape[1]
    if prepared is None:
        decoded = model.decode(context, torch.cat([data["surface"], data["queries"]], dim=1))
    else:
        decoded = model.decode_prepared(context, prepared)
    at_surface, predicted = decoded[:, :surface_count], decoded[:, surface_count:]  # (1, S|Q, C)
    own = at_surface.gather(-1, data["labels"].unsqueeze(-1) - 1)
    target = data["sdf"].clamp(-truncation, truncation) / truncation if truncation else data["sdf"]
    loss = 10 * own.abs().mean() + (predicted - target).abs().mean()
    if sign_weight:
        loss = loss + sign_weight * sign_loss(predicted.float(), data["sdf"], SIGN_TEMPERATURE)
    return loss, predicted


def _minibatch_indices(
    fit: dict[str, torch.Tensor], generator: torch.Generator, points: int, steps: int
) -> dict[str, torch.Tensor]:
    """Each step's random subset of `points` fit points, a third on the surface and the rest
    SDF queries: a step costs a fraction of the full set's forward and backward, and the
    changing draw covers all of it over the steps.

    Drawn for all steps at once, on the CPU (the same draws on every device), and moved to the
    fit's device in one copy: a copy per step would wait for the device each step, and on a GPU,
    where a step is a few milliseconds of kernel launches, those waits cost as much as the
    steps.

    Returns:
        {"surface": (steps, points // 3), "queries": (steps, the rest)} indices.
    """
    sizes = {"surface": points // 3, "queries": points - points // 3}
    drawn: dict[str, list[torch.Tensor]] = {"surface": [], "queries": []}
    for _ in range(steps):
        for kind in ("surface", "queries"):
            total = fit[kind].shape[1]
            drawn[kind].append(torch.randperm(total, generator=generator)[: sizes[kind]])
    device = fit["surface"].device
    return {
        kind: torch.stack(rows).to(device) if rows else torch.zeros(0, dtype=torch.long)
        for kind, rows in drawn.items()
    }


def _minibatch(
    fit: dict[str, torch.Tensor], indices: dict[str, torch.Tensor], step: int, prepared: Prepared
) -> tuple[dict[str, torch.Tensor], Prepared]:
    """Step `step`'s fit points (`_minibatch_indices`), and their rows of `prepared` (the
    decoder's preparation of all fit points, surface then queries)."""
    return _minibatch_rows(fit, {kind: rows[step] for kind, rows in indices.items()}, prepared)


def _minibatch_rows(
    fit: dict[str, torch.Tensor], drawn_rows: dict[str, torch.Tensor], prepared: Prepared
) -> tuple[dict[str, torch.Tensor], Prepared]:
    """The fit points of the given surface and query rows, and their rows of `prepared`."""
    drawn = {}
    for kind, keys in (("surface", ("surface", "labels")), ("queries", ("queries", "sdf"))):
        for key in keys:
            drawn[key] = fit[key][:, drawn_rows[kind]]
    rows = torch.cat([drawn_rows["surface"], drawn_rows["queries"] + fit["surface"].shape[1]])
    embedded, query = prepared
    return drawn, (embedded[:, rows], query[:, :, rows])


class Adam:
    """Adam (no weight decay) on one tensor, the update of `torch.optim.Adam`. Here because
    the first `torch.optim` optimizer of a process imports torch._dynamo: 1.5 s of a 60 s CLI
    run."""

    def __init__(
        self,
        parameter: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.parameter, self.lr, self.betas, self.eps = parameter, lr, betas, eps
        self.mean = torch.zeros_like(parameter)
        self.square = torch.zeros_like(parameter)
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        gradient = self.parameter.grad
        assert gradient is not None, "step() after backward()"
        beta1, beta2 = self.betas
        self.steps += 1
        self.mean.lerp_(gradient, 1 - beta1)
        self.square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
        correction1, correction2 = 1 - beta1**self.steps, 1 - beta2**self.steps
        denominator = (self.square.sqrt() / math.sqrt(correction2)).add_(self.eps)
        self.parameter.addcdiv_(self.mean, denominator, value=-self.lr / correction1)

    def zero_grad(self) -> None:
        self.parameter.grad = None


STEP_MODES = ("auto", "eager", "tensor", "graph")


class _TensorSteps:
    """The refinement's steps with all their state on the device: the step number, the step
    sizes and Adam's bias corrections are tensors the step reads, so one step can be captured
    as a CUDA graph and replayed (mode 'graph': a step is ~150 small kernels, and launching
    them one by one from Python cost 3-4 ms a step on an H200, most of the refinement's time),
    or run as it is (mode 'tensor', any device: what the tests compare with the eager loop).
    The same update as `Adam`, and the same draws (`_minibatch_indices`)."""

    def __init__(
        self,
        model: VecSetAutoencoder,
        free: torch.Tensor,
        target: str,
        fit: dict[str, torch.Tensor],
        indices: dict[str, torch.Tensor],
        prepared: Prepared,
        truncation: float | None,
        sign_weight: float,
        optimizer: Adam,
        step_sizes: list[float],
    ) -> None:
        device = free.device
        self.model, self.free, self.target = model, free, target
        self.fit, self.indices, self.prepared = fit, indices, prepared
        self.truncation, self.sign_weight, self.optimizer = truncation, sign_weight, optimizer
        beta1, beta2 = optimizer.betas
        steps = len(step_sizes)
        numbers = torch.arange(1, steps + 1, dtype=torch.float64)
        self.step_sizes = torch.tensor(step_sizes, dtype=torch.float64, device=device)
        self.corrections = (
            (1 - beta1**numbers).to(device),  # Adam's bias corrections, per step
            (1 - beta2**numbers).sqrt().to(device),
        )
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.losses = torch.zeros(steps, device=device)

    def run_one(self) -> None:
        """One step (what a graph captures): loss, backward, Adam, the step number + 1."""
        rows = {kind: self.indices[kind].index_select(0, self.step)[0] for kind in self.indices}
        current = self.model.process(self.free) if self.target == "latents" else self.free
        data, prepared = _minibatch_rows(self.fit, rows, self.prepared)
        loss, _ = _loss(self.model, current, data, self.truncation, self.sign_weight, prepared)
        loss.backward()
        with torch.no_grad():
            gradient = self.free.grad
            assert gradient is not None
            beta1, beta2 = self.optimizer.betas
            mean, square = self.optimizer.mean, self.optimizer.square
            mean.lerp_(gradient, 1 - beta1)
            square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            first = self.corrections[0].index_select(0, self.step)
            second = self.corrections[1].index_select(0, self.step)
            size = self.step_sizes.index_select(0, self.step)
            denominator = (square.sqrt() / second.float()).add_(self.optimizer.eps)
            self.free.sub_(mean / denominator * (size / first).float())
            self.losses.index_copy_(0, self.step, loss.detach().float().reshape(1))
            self.step.add_(1)

    def run(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All the steps; returns the first and the last step's loss."""
        steps = len(self.losses)
        if mode == "graph":
            self._capture_and_replay(steps)
        else:
            for _ in range(steps):
                self.free.grad = None
                self.run_one()
        self.free.grad = None
        return self.losses[0], self.losses[steps - 1]

    def _capture_and_replay(self, steps: int) -> None:
        device = self.free.device
        saved = self.free.detach().clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up steps before capturing, as CUDA graphs need
            for _ in range(3):
                self.free.grad = None
                self.run_one()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():  # undo them
            self.free.copy_(saved)
            self.optimizer.mean.zero_()
            self.optimizer.square.zero_()
            self.step.zero_()
        self.free.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.run_one()
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize(device)  # the stage's time is its GPU work's


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
    steps: int,
    truncation: float | None,
    rng: np.random.Generator,
    learning_rate: float = defaults.REFINE_LR,
    target: str = defaults.REFINE_TARGET,
    sign_weight: float = defaults.REFINE_SIGN_WEIGHT,
    points_per_step: int = defaults.REFINE_POINTS,
    final_lr: float = defaults.REFINE_FINAL_LR,
    targets: RefinementTargets | None = None,
    step_mode: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Adam on `target` ('context' or 'latents') for `steps` steps of `points_per_step` fit
    points each; `sign_weight` adds the sign term to the fit loss (`_loss`). The step size
    follows a cosine from `learning_rate` to `learning_rate * final_lr` (1: constant).
    `targets`: the fit data (`start_targets`), else drawn with a seed from `rng`.
    `step_mode`: 'eager' (a Python loop of `Adam` steps), 'tensor' or 'graph' (`_TensorSteps`;
    'graph' on a GPU only), 'auto': 'graph' on a GPU, else 'eager'. A graph that cannot be
    captured falls back to 'eager' with a warning.

    Returns:
        (latents, context, record): the latent set (refined when `target` is 'latents', else
        as given), the decoder's context to decode with, and a record of the fit: the sign IoU
        per class on held-out near and volume points before and after, so the report shows what
        refinement bought.
    """
    if target not in TARGETS:
        raise ValueError(f"refinement target {target!r}: expected one of {TARGETS}")
    if step_mode not in STEP_MODES:
        raise ValueError(f"refinement step mode {step_mode!r}: expected one of {STEP_MODES}")
    if step_mode == "auto":
        step_mode = "graph" if latents.device.type == "cuda" else "eager"
    started = time.perf_counter()
    if targets is None:
        targets = start_targets(volume, surfaces, normalization, int(rng.integers(2**63)))
    numpy_data = targets.result()
    device = latents.device
    fit, held_out = {}, {}
    for key, array in numpy_data.items():
        tensor = torch.from_numpy(np.asarray(array))
        tensor = tensor.long() if key == "labels" else tensor.float()
        half = len(tensor) // 2
        fit[key], held_out[key] = tensor[:half][None].to(device), tensor[half:][None].to(device)
    present = torch.zeros(numpy_data["sdf"].shape[1], dtype=torch.bool)
    present[torch.tensor(list(surfaces)) - 1] = True

    def held_out_iou(context: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            _, predicted = _loss(model, context, held_out, truncation)
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
    indices = _minibatch_indices(fit, generator, points_per_step, steps)
    with torch.no_grad():  # the fit points' embedding and attention queries, once
        prepared = model.prepare_queries(torch.cat([fit["surface"], fit["queries"]], dim=1))
    step_sizes = [learning_rate * cosine_factor(step, steps, final_lr) for step in range(steps)]
    if step_mode != "eager" and steps > 0:
        saved = free.detach().clone()
        tensor_steps = _TensorSteps(
            model, free, target, fit, indices, prepared, truncation, sign_weight, optimizer,
            step_sizes,
        )  # fmt: skip
        try:
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
            current = model.process(free) if target == "latents" else free
            data, step_prepared = _minibatch(fit, indices, step, prepared)
            loss, _ = _loss(model, current, data, truncation, sign_weight, step_prepared)
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
            "points_per_step": points_per_step,
            "final_lr": final_lr,
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
