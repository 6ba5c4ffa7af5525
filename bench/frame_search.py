"""Where the frame falls, and whether the input can say where it should: the checkpoint alone
(`--refine-steps 0`) on the real subjects with the normalized frame's centre (the centre of the
input's box) moved on a grid of STEP mm per axis, {-STEP, 0, STEP}^3, each frame's mean Dice
beside a score the input gives without any fitting: the Dice, against the input's own labels, of
the classes the encoded shape predicts at 40,000 points (half within ~3 mm of the input's
surfaces, half uniform in its box), decoded at those points only. If the score ranks the frames
as their Dice does, a search over frames (a few encodes, no gradient) is a cheap step between the
encoder alone and the refinement. Updates BENCHMARKS.md ("Frame search") and a PNG.

Usage: .venv/bin/python bench/frame_search.py [--checkpoint CKPT] [--step 5] [--resolution 128]
       [--report-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import measured, save_json, write_section
from cases import REAL
from encoder import RESULTS, frame_moved
from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.normalization import Normalization
from heartvec.reconstruction import pipeline
from heartvec.reconstruction.encoding import EncoderSample, LoadedModel, load_model
from heartvec.reconstruction.frame_search import FrameScore
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import BUNDLED_CHECKPOINT
from heartvec.surfaces import Surface, class_surfaces
from heartvec.volume import load_label_volume

SAVED = RESULTS / "frame_search.json"
PICTURE = RESULTS / "frame_search.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT)
    parser.add_argument("--step", type=float, default=5.0, help="mm between frames")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(SAVED.read_text()))
        return 0
    loaded = load_model(args.checkpoint)
    settings = ReconstructSettings(resolution=args.resolution, refine=RefineSettings(steps=0))
    shifts = [np.array(s) * args.step for s in itertools.product((-1, 0, 1), repeat=3)]
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (path, table) in REAL.items():
            if not path.is_file():
                continue
            label_table = load_label_table(table)
            _, centred, score = scored_case(loaded, path, table, settings.working_mm, (0, 0))
            frames = []
            for shift in tqdm(shifts, desc=name):
                with frame_moved(shift):
                    report = reconstruct(path, Path(scratch), label_table, loaded, settings)
                frames.append({
                    "shift_mm": shift.tolist(),
                    "mean_dice": report["summary"]["mean_dice"],
                    "score": score(Normalization(centred.center + shift, centred.scale)),
                })  # fmt: skip
            cases[name] = frames
    summary = {
        **measured(),
        "checkpoint": args.checkpoint.name,
        "sha256": loaded.sha256,
        "step_mm": args.step,
        "resolution": args.resolution,
        "cases": cases,
    }
    save_json(SAVED, summary)
    write_report(summary)
    return 0


def scored_case(
    loaded: LoadedModel, path: Path, table: str, working_mm: float | None, seeds: tuple[int, int]
) -> tuple[dict[int, Surface], Normalization, FrameScore]:
    """A case as the frame search sees it: the input's class surfaces, the checkpoint's frame
    centred on the input's box, and the score of a frame at 40,000 points (its encoder points
    drawn with seeds[0], the score's points with seeds[1])."""
    whole = load_label_volume(path, load_label_table(table))
    volume = whole.crop(*whole.foreground_box(margin=2))
    surfaces = class_surfaces(volume, working_mm)
    centred = pipeline.checkpoint_normalization(loaded.state, surfaces)
    sample = EncoderSample.draw(loaded.model, surfaces, np.random.default_rng(seeds[0]))
    rng = np.random.default_rng(seeds[1])
    return surfaces, centred, FrameScore(loaded.model, volume, surfaces, sample, rng, points=40_000)


def write_report(summary: dict[str, Any]) -> None:
    plot(summary)
    step = summary["step_mm"]
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/frame_search.py`: "
        f"`{summary['checkpoint']}` (sha256 {summary['sha256'][:12]}...) alone "
        f"(`--refine-steps 0`), resolution {summary['resolution']}, the frame's centre moved on "
        f"a grid of {step:g} mm per axis (27 frames). Score: the Dice against the input's labels "
        "at 40,000 points, from the encoding alone (no fitting).",
        "",
        "| case | centred | mean over frames | lowest - highest | correlation score / Dice "
        "| frame of the highest score | its Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, frames in summary["cases"].items():
        dice = np.array([f["mean_dice"] for f in frames])
        score = np.array([f["score"] for f in frames])
        centred = next(f for f in frames if not any(f["shift_mm"]))["mean_dice"]
        best = frames[int(score.argmax())]
        lines.append(
            f"| {name} | {centred:.3f} | {dice.mean():.3f} | {dice.min():.3f} - {dice.max():.3f} "
            f"| {np.corrcoef(score, dice)[0, 1]:.3f} | {best['shift_mm']} mm | "
            f"{best['mean_dice']:.3f} |"
        )
    lines += ["", f"![frames: score against Dice](bench/results/{PICTURE.name})"]
    write_section("bench/frame_search.py", "Frame search", lines)


def plot(summary: dict[str, Any]) -> None:
    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, frames in summary["cases"].items():
        score = [f["score"] for f in frames]
        dice = [f["mean_dice"] for f in frames]
        axes.plot(score, dice, "o", label=name)
    axes.set(xlabel="score: Dice against the input at 40,000 points, no fitting",
             ylabel="mean Dice of the reconstruction", title="one frame a point")  # fmt: skip
    axes.legend()
    figure.tight_layout()
    figure.savefig(PICTURE, dpi=80)


if __name__ == "__main__":
    raise SystemExit(main())
