"""Is the checkpoint alone off by noise or by bias? Each case is encoded several times (the frame's
centre moved 5 mm along each axis both ways, the frame 0.9x as large, other draws of the
encoder's surface points) and the signed distances decoded at fixed points are averaged: where
single encodings scatter around the shape (noise), their average reads better than one; where
they agree on the wrong shape (bias), it does not, and only training helps. Scored as the frame
search scores a frame: the Dice, against the input's own labels, of the classes predicted at
40,000 points (half within ~3 mm of the input's surfaces, half in its box), so the figures are
lower than a reconstruction's volume Dice. A diagnosis, not a feature: nothing in `heartvec
reconstruct` averages encodings. Updates BENCHMARKS.md ("The checkpoint alone: noise or bias")
and a PNG.

Usage: .venv/bin/python bench/encoder_ensemble.py [--checkpoint CKPT] [--seeds 5000 5001]
       [--report-only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import measured, save_json, write_section
from cases import subject_cases
from encoder import RESULTS, SHIFT_DIRECTIONS
from frame_search import scored_case
from tqdm import tqdm

from heartvec.normalization import Normalization
from heartvec.reconstruction.encoding import EncoderSample, load_model
from heartvec.reconstruction.frame_search import FrameScore
from heartvec.settings import BUNDLED_CHECKPOINT

SAVED = RESULTS / "encoder_ensemble.json"
PICTURE = RESULTS / "encoder_ensemble.png"
SHIFT_MM = 5.0
SCALE = 0.9
DRAWS = 7
GROUPS = {
    "shifted": "the centred frame and six moved 5 mm",
    "shifted_x0.9": "the same seven frames 0.9x as large",
    "draws": "the centred frame, seven draws of the encoder's points",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT)
    parser.add_argument("--seeds", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(SAVED.read_text()))
        return 0
    loaded = load_model(args.checkpoint)
    model = loaded.model
    cases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (path, table) in tqdm(subject_cases(Path(scratch), args.seeds).items()):
            surfaces, centred, score = scored_case(loaded, path, table, None, (0, 7))
            sample = score.sample
            moves = [np.zeros(3), *(SHIFT_DIRECTIONS * SHIFT_MM)]
            groups = {
                "shifted": [
                    _distances(score, sample, Normalization(centred.center + m, centred.scale))
                    for m in moves
                ],
                "shifted_x0.9": [
                    _distances(
                        score, sample, Normalization(centred.center + m, centred.scale * SCALE)
                    )
                    for m in moves
                ],
                "draws": [
                    _distances(
                        score,
                        EncoderSample.draw(model, surfaces, np.random.default_rng(100 + k)),
                        centred,
                    )
                    for k in range(DRAWS)
                ],
            }  # fmt: skip
            every = [d for group in groups.values() for d in group]
            cases[name] = {
                "centred": score.dice(groups["shifted"][0]),
                **{
                    group: {
                        "single": [score.dice(d) for d in members],
                        "average": score.dice(np.mean(members, axis=0)),
                    }
                    for group, members in groups.items()
                },
                "all_average": score.dice(np.mean(every, axis=0)),
                "all_count": len(every),
            }
    summary = {
        **measured(),
        "checkpoint": args.checkpoint.name,
        "sha256": loaded.sha256,
        "cases": cases,
    }
    save_json(SAVED, summary)
    write_report(summary)
    return 0


def _distances(score: FrameScore, sample: EncoderSample, frame: Normalization) -> np.ndarray:
    """The SDF (P, classes present) in mm at the score's points: frames of other scales average
    alike."""
    return score.distances(frame, sample) * frame.scale


def write_report(summary: dict[str, Any]) -> None:
    plot(summary)
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/encoder_ensemble.py`: "
        f"`{summary['checkpoint']}` (sha256 {summary['sha256'][:12]}...) alone, the Dice at "
        "40,000 points around each input's surfaces (lower than a reconstruction's volume "
        "Dice) of one encoding and of the SDF averaged over several: "
        + "; ".join(f"{k}: {v}" for k, v in GROUPS.items())
        + ". Real B was never trained on; real A shaped the last stages.",
        "",
        "| case | centred | " + " | ".join(f"{g}: one (mean) -> average" for g in GROUPS)
        + " | all averaged |",
        "|---|---|" + "---|" * len(GROUPS) + "---|",
    ]  # fmt: skip
    for name, case in summary["cases"].items():
        cells = [
            f"{np.mean(case[g]['single']):.3f} -> {case[g]['average']:.3f}" for g in GROUPS
        ]  # fmt: skip
        lines.append(
            f"| {name} | {case['centred']:.3f} | " + " | ".join(cells)
            + f" | {case['all_average']:.3f} ({case['all_count']}) |"
        )  # fmt: skip
    lines += ["", f"![one encoding against their average](bench/results/{PICTURE.name})"]
    write_section("bench/encoder_ensemble.py", "The checkpoint alone: noise or bias", lines)


def plot(summary: dict[str, Any]) -> None:
    names = list(summary["cases"])
    figure, axes = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(names))
    width = 0.8 / (len(GROUPS) + 2)
    bars = {"centred": [summary["cases"][n]["centred"] for n in names]}
    for group in GROUPS:
        bars[f"{group}, averaged"] = [summary["cases"][n][group]["average"] for n in names]
    bars["all averaged"] = [summary["cases"][n]["all_average"] for n in names]
    for index, (label, values) in enumerate(bars.items()):
        axes.bar(x + (index - len(bars) / 2 + 0.5) * width, values, width, label=label)
    axes.set_xticks(x, names)
    axes.set(ylabel="Dice at 40,000 points near the surfaces",
             title=f"{summary['checkpoint']}: one encoding and averages")  # fmt: skip
    low = min(min(v) for v in bars.values())
    axes.set_ylim(max(0.0, low - 0.1), 1.0)
    axes.legend(fontsize=8)
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(PICTURE, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
