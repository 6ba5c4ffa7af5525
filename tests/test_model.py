"""The VecSet autoencoder's parts: FPS, shapes, the finite-difference eikonal term, the sign
term."""

from __future__ import annotations

import numpy as np
import torch

from heartvec.model.config import MODEL_PRESETS
from heartvec.model.objectives import sign_loss
from heartvec.model.sampling import balanced_surface_subsample, farthest_point_sampling
from heartvec.model.vecset import VecSetAutoencoder
from heartvec_trainer.config import TRAIN_PRESETS
from heartvec_trainer.losses import _eikonal, eikonal_queries, training_loss


def test_fps_spreads_points_better_than_random() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 2000, 3, generator=generator)
    index = farthest_point_sampling(points, 64)
    assert index.shape == (3, 64)
    assert all(len(set(row.tolist())) == 64 for row in index)

    def coverage(chosen: torch.Tensor) -> float:  # worst distance from a point to the chosen
        return float(torch.cdist(points[0], points[0, chosen]).min(dim=1).values.max())

    assert coverage(index[0]) < 0.7 * coverage(torch.arange(64))


def test_balanced_subsample_gives_each_class_its_share() -> None:
    labels = np.repeat([1, 2, 10], [9000, 900, 30])
    points = np.random.default_rng(0).random((len(labels), 3))
    chosen, chosen_labels = balanced_surface_subsample(
        points, labels, 300, np.random.default_rng(1)
    )
    assert chosen.shape == (300, 3) and chosen.dtype == np.float32
    assert sorted(np.bincount(chosen_labels)[[1, 2, 10]].tolist()) == [100, 100, 100]


def test_autoencoder_shapes_per_class_output() -> None:
    torch.manual_seed(0)
    config = MODEL_PRESETS["tiny"]
    model = VecSetAutoencoder(config)
    points = torch.rand(2, config.num_inputs, 3) * 2 - 1
    labels = torch.randint(1, 11, (2, config.num_inputs))
    latents = model.encode(points, labels)
    assert latents.shape == (2, config.num_latents, config.latent_dim)
    sdf = model.decode(model.process(latents), torch.rand(2, 77, 3))
    assert sdf.shape == (2, 77, 10)


def test_finite_difference_gradient_matches_autograd() -> None:
    """The eikonal term's central differences agree with the true gradient of the decoder."""
    torch.manual_seed(0)
    model = VecSetAutoencoder(MODEL_PRESETS["tiny"]).double()
    points = torch.rand(1, 512, 3, dtype=torch.float64) * 2 - 1
    labels = torch.randint(1, 11, (1, 512))
    context = model.process(model.encode(points, labels))
    centres = (torch.rand(1, 20, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    sdf = model.decode(context, centres)  # (1, 20, C)
    channel = 3
    (true_gradient,) = torch.autograd.grad(sdf[..., channel].sum(), centres)
    step = 1e-5  # the error falls as step^2 (truncation), so it converges to autograd
    shifted = model.decode(context, eikonal_queries(centres.detach(), step)).view(1, 20, 6, 10)
    difference = (shifted[:, :, :3, channel] - shifted[:, :, 3:, channel]) / (2 * step)
    torch.testing.assert_close(difference, true_gradient, rtol=1e-4, atol=1e-3)


def test_eikonal_is_zero_for_a_true_distance_field() -> None:
    config = TRAIN_PRESETS["tiny"]
    centres = torch.rand(2, 30, 3) * 0.2
    shifted_points = eikonal_queries(centres, config.eikonal_step)  # (2, 180, 3)
    # a plane's signed distance x, in truncated units x / t, on every channel
    prediction = (shifted_points[..., :1] / config.truncation).expand(-1, -1, 10)
    sdf = centres[..., :1].expand(-1, -1, 10) * 0  # all inside the band
    assert float(_eikonal(prediction, sdf, config)) < 1e-6
    assert float(_eikonal(2 * prediction, sdf, config)) > 0.9


def test_sign_term_counts_sign_errors_that_l1_barely_sees() -> None:
    """A thin class predicted slightly outside everywhere: L1 hardly changes, the sign term
    jumps; and the term only enters the loss when its weight is set."""
    depth = torch.linspace(-0.04, 0.04, 101)  # true SDF across a wall 0.08 wide (truncated units)
    sdf = depth.view(1, -1, 1)
    right, wrong = sdf.clone(), sdf.abs() + 0.01  # `wrong`: inside points predicted outside
    l1_gap = float((wrong - sdf).abs().mean() - (right - sdf).abs().mean())
    sign_gap = float(sign_loss(wrong, sdf, 0.01) - sign_loss(right, sdf, 0.01))
    assert l1_gap < 0.04 and sign_gap > 30 * l1_gap
    assert float(sign_loss(sdf * 100, sdf, 0.01)) < 0.02  # confident and right: near zero

    from dataclasses import replace

    torch.manual_seed(0)
    config = TRAIN_PRESETS["tiny"]
    model = VecSetAutoencoder(MODEL_PRESETS["tiny"])
    inputs = MODEL_PRESETS["tiny"].num_inputs
    batch = {
        "inputs": torch.rand(1, inputs, 3) * 2 - 1,
        "input_labels": torch.randint(1, 11, (1, inputs)),
        "vol_points": torch.rand(1, 64, 3) * 2 - 1,
        "vol_sdf": torch.randn(1, 64, 10) * 0.1,
        "near_points": torch.rand(1, 64, 3) * 2 - 1,
        "near_sdf": torch.randn(1, 64, 10) * 0.05,
        "surface_points": torch.rand(1, 32, 3) * 2 - 1,
        "surface_labels": torch.randint(1, 11, (1, 32)),
    }
    loss, terms, _ = training_loss(model, batch, config)
    assert "sign" not in terms
    signed, signed_terms, _ = training_loss(model, batch, replace(config, weight_sign=0.5))
    torch.testing.assert_close(signed, loss + 0.5 * signed_terms["sign"])


def test_activation_checkpointing_changes_nothing_but_memory() -> None:
    from dataclasses import replace

    config = MODEL_PRESETS["tiny"]
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VecSetAutoencoder(replace(config, activation_checkpointing=checkpointing))
        points = torch.rand(2, config.num_inputs, 3, generator=torch.Generator().manual_seed(1))
        labels = torch.randint(1, 11, (2, config.num_inputs), generator=torch.Generator())
        output = model(points, labels, points[:, :100])
        output.square().sum().backward()
        results.append((output.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for plain, recomputed in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(plain, recomputed)


def test_fused_cpu_inference_matches_the_plain_modules() -> None:
    """fp32 inference on a CPU takes oneDNN's fused linear (bias and GELU inside the product);
    with autograd on, the plain modules. Both give the same SDF, on the bundled checkpoint's
    weights (the `small` preset) and a random context."""
    from heartvec.model import layers
    from heartvec.reconstruction.encoding import load_model
    from heartvec.settings import default_checkpoint

    model = load_model(default_checkpoint(), "cpu").model
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(1, model.config.num_latents, model.config.width, generator=generator)
    queries = torch.rand(1, 4096, 3, generator=generator) * 1.4 - 0.7
    with torch.no_grad():
        assert layers._fused(queries) == torch.backends.mkldnn.is_available()
        fused = model.decode(context, queries)
    plain = model.decode(context, queries)  # autograd on (weights frozen, nothing to backward)
    assert not layers._fused(queries)
    torch.testing.assert_close(fused, plain.detach(), atol=1e-4, rtol=1e-4)
    assert (fused.sign() == plain.sign()).float().mean() > 0.999
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers._fused(queries)


def test_prepared_queries_decode_as_plain_queries_with_the_same_gradient() -> None:
    """Refinement prepares its fit points' embedding and attention queries once and decodes
    rows of them against each step's context: the same values and context gradient as
    decoding the points themselves."""
    torch.manual_seed(0)
    model = VecSetAutoencoder(MODEL_PRESETS["tiny"]).eval()
    points = torch.rand(1, 300, 3) * 2 - 1
    labels = torch.randint(1, 11, (1, 300))
    queries = torch.rand(1, 500, 3) * 2 - 1
    rows = torch.randperm(500)[:200]
    with torch.no_grad():
        context = model.process(model.encode(points, labels))
        embedded, query = model.prepare_queries(queries)
    results = []
    for prepared in (False, True):
        free = context.clone().requires_grad_(True)
        if prepared:
            decoded = model.decode_prepared(free, (embedded[:, rows], query[:, :, rows]))
        else:
            decoded = model.decode(free, queries[:, rows])
        decoded.square().sum().backward()
        assert free.grad is not None and free.grad.abs().max() > 0
        results.append((decoded.detach(), free.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)
