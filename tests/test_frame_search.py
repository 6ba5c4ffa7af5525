"""The frame search (`heartvec.reconstruction.frame_search`): the compass search's moves on
scores whose best frame is known, and on the held-out real heart what it buys the encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heartvec.labels import load_label_table
from heartvec.normalization import Normalization
from heartvec.phantom import make_phantom
from heartvec.reconstruction.encoding import EncoderSample, checkpoint_normalization, load_model
from heartvec.reconstruction.frame_search import FrameScore, FrameSteps, search_frame
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import BUNDLED_CHECKPOINT
from heartvec.surfaces import class_surfaces
from heartvec.volume import load_label_volume
from heartvec_testing.volumes import write_nifti

CENTRED = Normalization(center=np.array([10.0, -20.0, 30.0]), scale=100.0)


class PeakedScore:
    """A score that falls away from one frame (a centre shift in mm and a scale factor): counts
    the frames it is asked about."""

    def __init__(self, shift_mm: tuple[float, float, float], scale_factor: float) -> None:
        self.peak = CENTRED.center + np.array(shift_mm)
        self.log_scale = np.log(CENTRED.scale * scale_factor)
        self.asked: list[Normalization] = []

    def __call__(self, frame: Normalization) -> float:
        self.asked.append(frame)
        return self.value(frame)

    def value(self, frame: Normalization) -> float:
        distance = np.sum((frame.center - self.peak) ** 2) / 100.0
        return float(-distance - 100.0 * (np.log(frame.scale) - self.log_scale) ** 2)


def test_the_search_climbs_to_the_best_frame() -> None:
    score = PeakedScore((-10.0, 5.0, 2.5), 0.9)
    chosen, record = search_frame(score, CENTRED, FrameSteps(frames=64))
    np.testing.assert_allclose(chosen.center, score.peak, atol=1e-9)
    finest = np.log1p(0.1) / 4  # the scale's step after two halvings
    assert abs(np.log(chosen.scale / 90.0)) <= finest / 2 + 1e-9
    assert record["shift_mm"] == [-10.0, 5.0, 2.5]
    assert record["scale_factor"] == pytest.approx(chosen.scale / CENTRED.scale, abs=1e-4)
    assert record["score"] > record["centred_score"]
    # every frame is scored once, the first is the centred one, and the record lists them all
    assert record["frames"] == len(score.asked) == len(record["tried"]) < 64
    np.testing.assert_array_equal(score.asked[0].center, CENTRED.center)
    assert record["score"] == max(t["score"] for t in record["tried"])


def test_a_search_stops_at_its_budget_with_the_best_frame_it_scored() -> None:
    score = PeakedScore((-10.0, 5.0, 2.5), 0.9)
    chosen, record = search_frame(score, CENTRED, FrameSteps(frames=5))
    assert len(score.asked) == record["frames"] == 5
    best = max(score.asked, key=score.value)
    np.testing.assert_array_equal(chosen.center, best.center)
    assert chosen.scale == best.scale


def test_a_search_keeps_within_its_bounds() -> None:
    score = PeakedScore((40.0, -40.0, 0.0), 2.0)  # far beyond where the frame may go
    steps = FrameSteps(frames=64, max_shift_mm=15.0, max_scale=1.25)
    _, record = search_frame(score, CENTRED, steps)
    shifts = np.array([frame.center - CENTRED.center for frame in score.asked])
    scales = np.array([frame.scale / CENTRED.scale for frame in score.asked])
    assert np.abs(shifts).max() <= 15.0
    assert scales.min() >= 1 / 1.25 - 1e-9 and scales.max() <= 1.25 + 1e-9
    assert record["shift_mm"][:2] == [15.0, -15.0]  # as near to the peak as the bounds allow


def test_a_centred_best_costs_the_neighbours_of_each_step_and_moves_nothing() -> None:
    score = PeakedScore((0.0, 0.0, 0.0), 1.0)
    chosen, record = search_frame(score, CENTRED, FrameSteps(frames=64))
    np.testing.assert_array_equal(chosen.center, CENTRED.center)
    assert chosen.scale == CENTRED.scale
    assert record["frames"] == 1 + 3 * 8  # the centre, then 8 neighbours at each of 3 steps
    assert record["shift_mm"] == [0.0, 0.0, 0.0] and record["scale_factor"] == 1.0


@pytest.mark.slow
def test_on_the_held_out_heart_the_search_lifts_the_encoder_alone(
    held_out_heart: Path, tmp_path: Path
) -> None:
    """Real subject B, which the bundled checkpoint never trained on: the frame the input's own
    labels score best encodes to a reconstruction closer to the input than the centred frame
    (bench/frame_search_reconstruct.py: 0.663 -> 0.689 mean Dice at resolution 256), and the
    shape code keeps the frame it chose."""
    loaded = load_model(BUNDLED_CHECKPOINT)
    table = load_label_table("mmwhs-raw")
    reports = {}
    for frames in (0, 48):
        settings = ReconstructSettings(
            resolution=96, refine=RefineSettings(steps=0), frame_search=frames
        )
        out = tmp_path / str(frames)
        reports[frames] = reconstruct(held_out_heart, out, table, loaded, settings)
    centred, searched = reports[0], reports[48]
    assert centred["frame_search"] is None
    record = searched["frame_search"]
    assert record["score"] > record["centred_score"] and record["frames"] > 8
    assert searched["summary"]["mean_dice"] > centred["summary"]["mean_dice"] + 0.01
    assert searched["normalization"] != centred["normalization"]
    code = np.load(tmp_path / "48" / "shape_code.npz")
    np.testing.assert_allclose(code["center"], searched["normalization"]["center_mm"])
    assert float(code["scale"]) == pytest.approx(searched["normalization"]["scale_mm"])
    assert float(code["scale"]) == pytest.approx(
        centred["normalization"]["scale_mm"] * record["scale_factor"], rel=1e-3
    )


def test_the_score_is_the_dice_of_the_distances_at_its_points(tmp_path: Path) -> None:
    """`FrameScore` in its parts: the distances an encoding decodes at the score's points, and
    their Dice against the input (1 for distances that put each point in its own class, 0 for
    none inside any class); another draw of the encoder's points decodes other distances."""
    labels, affine = make_phantom(9, size=96, spacing=2.0)
    path = write_nifti(tmp_path / "phantom.nii.gz", labels, affine)
    volume = load_label_volume(path, load_label_table("default"))
    surfaces = class_surfaces(volume, None)
    loaded = load_model(BUNDLED_CHECKPOINT)
    sample = EncoderSample.draw(loaded.model, surfaces, np.random.default_rng(0))
    score = FrameScore(
        loaded.model, volume, surfaces, sample, np.random.default_rng(1), points=4000
    )
    frame = checkpoint_normalization(loaded.state, surfaces)
    distances = score.distances(frame)
    assert distances.shape == (4000, len(score.present))
    assert score(frame) == score.dice(distances) > 0.4
    exact = np.where(score.truth[:, None] == score.present[None, :], -1.0, 1.0)
    assert score.dice(exact) == 1.0
    assert score.dice(np.ones_like(distances)) == 0.0
    other = EncoderSample.draw(loaded.model, surfaces, np.random.default_rng(5))
    redrawn = score.distances(frame, other)
    assert not np.array_equal(redrawn, distances)
    assert abs(score.dice(redrawn) - score.dice(distances)) < 0.05  # (0.006 measured)
