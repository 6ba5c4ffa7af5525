"""Where the frame falls: a search over the frame's centre and scale, scored by the input.

The encoder sees the heart in a frame centred on the input's box; that centre is a convention,
and on a heart it has not seen the encoder alone can read several hundredths of mean Dice better
a few millimetres away (bench/frame_search.py, BENCHMARKS.md "Frame search"). The input says
which frame suits it: each candidate frame is encoded and decoded at fixed points around the
input's surfaces, and scored by the Dice of the classes it predicts there against the input's own
labels. No gradient and no fitting: a compass search moves the centre along the axes and the
frame's scale while the score rises, then by half the steps, within a number of encodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from heartvec.model.vecset import VecSetAutoencoder
from heartvec.normalization import Normalization
from heartvec.reconstruction.decoding import decode_autocast
from heartvec.reconstruction.encoding import EncoderSample
from heartvec.samples import sample_surfaces
from heartvec.surfaces import Surface
from heartvec.volume import LabelVolume

SCORE_POINTS = 20_000
"""Points a frame is scored at: half within ~3 mm of the input's surfaces, half uniform in its
box + 10 mm. At 40,000 the score's ranking of 27 frames matched their Dice on held-out real B
(correlation 0.99, bench/frame_search.py); 20,000 decoded in bf16 rank 32 frames of a search
as 40,000 in fp32 do (correlation 0.985, the same top frame) at under half the time."""
NEAR_MM = 3.0  # the spread of the near half around the surfaces
BOX_MARGIN_MM = 10.0


class FrameScore:
    """The score of a frame: mean over the input's classes of the Dice, at fixed points, between
    the classes the frame's encoding predicts (lowest SDF where it is negative) and the input's.

    Args:
        volume: the input (its heart crop is enough); surfaces: its class surfaces, world mm.
        rng: draws the score's points.
        dtype: of the decoding at the points (autocast, `decode_autocast`); None: fp32.
        points: how many points the score is taken at.
    """

    def __init__(
        self,
        model: VecSetAutoencoder,
        volume: LabelVolume,
        surfaces: dict[int, Surface],
        sample: EncoderSample,
        rng: np.random.Generator,
        dtype: torch.dtype | None = None,
        points: int = SCORE_POINTS,
    ) -> None:
        self.model, self.sample, self.dtype = model, sample, dtype
        self.device = next(model.parameters()).device
        half = points // 2
        on_surface, _, _ = sample_surfaces(surfaces, half, rng)
        near = on_surface + rng.normal(0.0, NEAR_MM, on_surface.shape)
        low = on_surface.min(axis=0) - BOX_MARGIN_MM
        high = on_surface.max(axis=0) + BOX_MARGIN_MM
        self.points = np.concatenate([near, rng.uniform(low, high, (half, 3))])  # (P, 3) mm
        self.present = np.array(sorted(surfaces))  # class indices 1..C
        self.truth = volume.class_at(self.points)  # (P,)

    def __call__(self, frame: Normalization) -> float:
        return self.dice(self.distances(frame))

    @torch.no_grad()
    def distances(self, frame: Normalization, sample: EncoderSample | None = None) -> np.ndarray:
        """(P, classes present) float32: the SDF, in the model's units, at the score's points
        of the encoding of `sample` (the score's own when None) in `frame`."""
        points, labels = (self.sample if sample is None else sample).inputs(frame)
        queries = torch.from_numpy(frame.to_normalized(self.points)).float()[None]
        context = self.model.process(
            self.model.encode(points.to(self.device), labels.to(self.device))
        )
        with decode_autocast(self.dtype, self.device):
            decoded = self.model.decode(context, queries.to(self.device))[0]  # (P, C)
        columns = torch.from_numpy(self.present - 1).to(self.device)
        return np.asarray(decoded[:, columns].float().cpu().numpy())

    def dice(self, distances: np.ndarray) -> float:
        """Mean over the input's classes of the Dice at the score's points between the classes
        `distances` (`FrameScore.distances`) predict (lowest SDF where it is negative) and the
        input's."""
        predicted = np.where(
            distances.min(axis=1) < 0, self.present[distances.argmin(axis=1)], 0
        )  # fmt: skip
        dice = [
            2 * np.sum((predicted == c) & (self.truth == c))
            / max(1, np.sum(predicted == c) + np.sum(self.truth == c))
            for c in self.present
        ]  # fmt: skip
        return float(np.mean(dice))


@dataclass(frozen=True)
class FrameSteps:
    """How a search moves the frame (`search_frame`).

    Args:
        frames: frames scored at most, the centred one included (0 or 1: no search).
        step_mm: the first step of the centre along an axis, mm.
        scale_step: the first step of the scale, a fraction (0.05: x1.05 or /1.05).
        halvings: how many times the steps are halved once they find nothing better.
        max_shift_mm: how far the centre may move from the input box's centre per axis, mm.
        max_scale: how far the scale may move from the checkpoint's, a factor (1.25: 0.8-1.25).
    """

    frames: int
    step_mm: float = 10.0
    scale_step: float = 0.1
    halvings: int = 2
    max_shift_mm: float = 15.0
    max_scale: float = 1.25


def search_frame(
    score: Callable[[Normalization], float], centred: Normalization, steps: FrameSteps
) -> tuple[Normalization, dict[str, Any]]:
    """A compass search over the frame's centre and scale: from `centred`, try one step along
    each of the four both ways, move to the best while it scores higher, then the same at half
    the steps; stop after `steps.frames` scored frames or when half the steps find nothing
    better.

    Returns:
        the best-scoring frame, and a record: its centre's shift (mm) and scale factor, the
        centred and chosen scores, the number of frames scored and each (shift, scale, score).
    """
    tried: dict[tuple[float, ...], float] = {}

    def scored(move: np.ndarray) -> float:
        if _key(move) not in tried:
            tried[_key(move)] = score(_moved(centred, move))
        return tried[_key(move)]

    # a move: (dx, dy, dz) mm and the log of the scale factor
    best = np.zeros(4)
    best_score = scored(best)
    limit = np.array([steps.max_shift_mm] * 3 + [np.log(steps.max_scale)]) + 1e-9
    unit = np.array([steps.step_mm] * 3 + [np.log1p(steps.scale_step)])
    directions = np.vstack([np.eye(4), -np.eye(4)]) * unit
    for halving in 0.5 ** np.arange(steps.halvings + 1):
        while len(tried) < steps.frames:
            candidates = [best + halving * d for d in directions]
            fresh = [c for c in candidates if np.all(np.abs(c) <= limit) and _key(c) not in tried]
            for candidate in fresh[: steps.frames - len(tried)]:
                scored(candidate)
            known = [(tried[_key(c)], c) for c in candidates if _key(c) in tried]
            top_score, top = max(known, key=lambda r: r[0], default=(best_score, best))
            if top_score <= best_score:
                break
            best_score, best = top_score, top
    record = {
        "shift_mm": [round(float(s), 3) for s in best[:3]],
        "scale_factor": round(float(np.exp(best[3])), 4),
        "centred_score": round(tried[_key(np.zeros(4))], 4),
        "score": round(best_score, 4),
        "frames": len(tried),
        "tried": [
            {
                "shift_mm": list(k[:3]),
                "scale_factor": round(float(np.exp(k[3])), 4),
                "score": round(v, 4),
            }
            for k, v in tried.items()
        ],
    }
    return _moved(centred, best), record


def _moved(centred: Normalization, move: np.ndarray) -> Normalization:
    """`centred` with its centre moved by move[:3] mm and its scale times exp(move[3])."""
    return Normalization(centred.center + move[:3], centred.scale * float(np.exp(move[3])))


def _key(move: np.ndarray) -> tuple[float, ...]:
    """A move as a dictionary key (rounded so that equal sums of steps meet)."""
    return tuple(float(s) + 0.0 for s in np.round(move, 6))  # + 0.0: no -0.0
