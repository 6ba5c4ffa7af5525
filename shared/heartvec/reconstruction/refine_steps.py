"""The refinement's fit loss, its steps' draws of fit points, its optimizer, and its steps as
device tensors (what a GPU captures as one CUDA graph and replays)."""

from __future__ import annotations

import math

import torch

from heartvec.model.objectives import sign_loss
from heartvec.model.vecset import VecSetAutoencoder

SIGN_TEMPERATURE = 0.1  # as training's `sign_temperature`, in target units


Prepared = tuple[torch.Tensor, torch.Tensor]
"""`VecSetAutoencoder.prepare_queries` of a set of points."""


def fit_loss(
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


def minibatch_indices(
    fit: dict[str, torch.Tensor],
    generator: torch.Generator,
    points: int,
    steps: int,
    near: int | None = None,
    near_share: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Each step's random subset of `points` fit points, a third on the surface and the rest
    SDF queries: a step costs a fraction of the full set's forward and backward, and the
    changing draw covers all of it over the steps. The fit's first `near` queries (None: all)
    lie near the surfaces and the rest in the volume: a share `near_share` of a step's queries
    comes from the first, the rest from the second (all from one kind where the other has
    none).

    Drawn for all steps at once, on the CPU (the same draws on every device), and moved to the
    fit's device in one copy: a copy per step would wait for the device each step, and on a GPU,
    where a step is a few milliseconds of kernel launches, those waits cost as much as the
    steps.

    Returns:
        {"surface": (steps, points // 3), "queries": (steps, the rest)} indices.
    """
    if not 0.0 <= near_share <= 1.0:
        raise ValueError(f"near share {near_share}: expected a share in [0, 1]")
    total = fit["queries"].shape[1]
    near = total if near is None else near
    queries = points - points // 3
    from_near = round(queries * near_share)
    if near == total:
        from_near = queries
    elif near == 0:
        from_near = 0
    drawn: dict[str, list[torch.Tensor]] = {"surface": [], "queries": []}
    for _ in range(steps):
        surface = torch.randperm(fit["surface"].shape[1], generator=generator)[: points // 3]
        close = torch.randperm(near, generator=generator)[:from_near]
        far = near + torch.randperm(total - near, generator=generator)[: queries - from_near]
        drawn["surface"].append(surface)
        drawn["queries"].append(torch.cat([close, far]))
    device = fit["surface"].device
    return {
        kind: torch.stack(rows).to(device) if rows else torch.zeros(0, dtype=torch.long)
        for kind, rows in drawn.items()
    }


def minibatch(
    fit: dict[str, torch.Tensor], indices: dict[str, torch.Tensor], step: int, prepared: Prepared
) -> tuple[dict[str, torch.Tensor], Prepared]:
    """Step `step`'s fit points (`minibatch_indices`), and their rows of `prepared` (the
    decoder's preparation of all fit points, surface then queries)."""
    return minibatch_rows(fit, {kind: rows[step] for kind, rows in indices.items()}, prepared)


def minibatch_rows(
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
    the first `torch.optim` optimizer of a process imports torch._dynamo, which takes seconds of
    a one-volume run."""

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


class TensorSteps:
    """The refinement's steps with all their state on the device: the step number, the step
    sizes and Adam's bias corrections are tensors the step reads, so one step can be captured as
    a CUDA graph and replayed (mode 'graph': a step is ~150 small kernels, and on a GPU
    launching them one by one from Python takes most of the refinement's time), or run as it is
    (mode 'tensor', any device: what the tests compare with the eager loop). The same update as
    `Adam`, and the same draws (`minibatch_indices`)."""

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
        data, prepared = minibatch_rows(self.fit, rows, self.prepared)
        loss, _ = fit_loss(self.model, current, data, self.truncation, self.sign_weight, prepared)
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
