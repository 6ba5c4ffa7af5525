"""The checkpoint alone (the encoder's latents, no refinement) against training: per class, on
the real subjects (the one the run never trained on first: B, or A with `--trained-on B`) and
unseen phantoms, for a list of checkpoints (a run's snapshots: each one's step and
training time are read from it). Updates BENCHMARKS.md with a table, Dice against training time
and the run's own curve.

Usage: .venv/bin/python bench/encoder.py [--checkpoints A.pt B.pt ...] [--run RUN]
       [--trained-on A|B] [--resolution 128] [--seeds 5000 5001] [--tag T] [--frame-shift MM]
       [--compare TAG]

`--tag T` keeps a run's results apart from the others (bench/results/encoder_T.json and its
pictures, its own section of BENCHMARKS.md headed "The checkpoint alone against training: T").

`--compare TAG` draws the curves of a run saved under `--tag TAG` (the same recipe but for one
change, e.g.) dashed beside this one's, against training steps.

`--frame-shift MM` also encodes the real subjects with the normalized frame's centre (the centre
of the input's box) moved MM along each axis, both ways (six more frames a case), and reports the
mean Dice over the seven frames and its range: how much the checkpoint alone depends on where
the frame falls on the heart, which nothing in an input fixes to the millimetre.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import measured, save_json, write_section
from cases import REAL, add_trained_on, subject_cases
from reconstruct import REPO
from tqdm import tqdm

from heartvec.labels import CLASS_NAMES, load_label_table
from heartvec.model.checkpoint import load_checkpoint
from heartvec.normalization import Normalization
from heartvec.reconstruction import pipeline
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import BUNDLED_CHECKPOINT

RESULTS = REPO / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, nargs="*", default=[BUNDLED_CHECKPOINT])
    parser.add_argument("--run", type=Path, help="the run the checkpoints come from")
    add_trained_on(parser)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument("--tag", default="", help="keep these results apart (e.g. stage6)")
    parser.add_argument(
        "--frame-shift", type=float, default=0.0, help="mm; also the six shifted frames (real)"
    )
    parser.add_argument("--compare", help="a saved run's tag: its curves beside this one's")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    saved = result_path(args.tag, ".json")
    if args.compare is not None and not result_path(args.compare, ".json").is_file():
        parser.error(f"--compare {args.compare}: no {result_path(args.compare, '.json')}")
    if args.report_only:
        summary = json.loads(saved.read_text())
        if args.compare is not None:
            summary["compare"] = args.compare
            save_json(saved, summary)
        write_report(summary, args.tag)
        return 0
    settings = ReconstructSettings(resolution=args.resolution, refine=RefineSettings(steps=0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = subject_cases(folder, args.seeds, args.trained_on)
        for checkpoint in tqdm(args.checkpoints, desc="checkpoints"):
            state = load_checkpoint(checkpoint)
            loaded = load_model(checkpoint)
            row: dict[str, Any] = {
                "checkpoint": checkpoint.name,
                "sha256": loaded.sha256,
                "step": state.get("step"),
                "elapsed_s": state.get("elapsed_s"),
                "cases": {},
            }
            for name, (path, table) in cases.items():
                report = reconstruct(
                    path, folder / "out", load_label_table(table), loaded, settings
                )
                row["cases"][name] = {
                    "mean_dice": report["summary"]["mean_dice"],
                    "dice": {c: v["dice"] for c, v in report["classes"].items()},
                    "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                }
                if args.frame_shift > 0 and name in REAL:
                    shifted = []
                    for shift in SHIFT_DIRECTIONS * args.frame_shift:
                        with frame_moved(shift):
                            report = reconstruct(
                                path, folder / "out", load_label_table(table), loaded, settings
                            )
                        shifted.append(report["summary"]["mean_dice"])
                    row["cases"][name]["shifted_mean_dice"] = shifted
            rows.append(row)
    summary = {
        **measured(),
        "resolution": args.resolution,
        "trained_on": args.trained_on,
        "frame_shift_mm": args.frame_shift,
        "rows": rows,
        **({"compare": args.compare} if args.compare is not None else {}),
    }
    RESULTS.mkdir(exist_ok=True)
    if args.run is not None and (args.run / "training_curve.png").is_file():
        shutil.copy(args.run / "training_curve.png", result_path(args.tag, "_run_curve.png"))
        summary["run_history"] = json.loads((args.run / "history.json").read_text())
    save_json(saved, summary)
    write_report(summary, args.tag)
    return 0


SHIFT_DIRECTIONS = np.concatenate([np.eye(3), -np.eye(3)])


@contextmanager
def frame_moved(shift_mm: np.ndarray) -> Iterator[None]:
    """Within it, `reconstruct` centres the normalized frame `shift_mm` away from where it would."""
    chosen = pipeline.checkpoint_normalization

    def moved(state: dict[str, Any], surfaces: Any) -> Normalization:
        frame = chosen(state, surfaces)
        return Normalization(center=frame.center + shift_mm, scale=frame.scale)

    pipeline.checkpoint_normalization = moved
    try:
        yield
    finally:
        pipeline.checkpoint_normalization = chosen


def result_path(tag: str, suffix: str) -> Path:
    """bench/results/encoder[_TAG]SUFFIX."""
    return RESULTS / (f"encoder_{tag}{suffix}" if tag else f"encoder{suffix}")


def write_report(summary: dict[str, Any], tag: str = "") -> None:
    """The section of BENCHMARKS.md and its pictures, from the results."""
    rows = summary["rows"]
    cases = list(rows[0]["cases"])
    trained_on = summary.get("trained_on", "A" if summary.get("trained_on_a") else None)
    held_out = "A" if trained_on == "B" else "B"
    seen = f" (a run trained on hearts made from {trained_on})" if trained_on else ""
    picture, curve = result_path(tag, ".png"), result_path(tag, "_run_curve.png")
    plot(rows, cases, picture)
    compare = summary.get("compare")
    if compare is not None:
        other = json.loads(result_path(compare, ".json").read_text())["rows"]
        plot_beside(rows, other, cases, tag, compare, result_path(tag, f"_vs_{compare}.png"))
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/encoder.py"
        f"{' --tag ' + tag if tag else ''}`: the "
        f"checkpoint alone (`--refine-steps 0`), resolution {summary['resolution']}, mean Dice "
        f"(seven large structures on the real subjects). Real {held_out} was never trained on"
        f"{seen}.",
        "",
        "| checkpoint | step | training | " + " | ".join(cases) + " |",
        "|---|---|---|" + "---|" * len(cases),
    ]
    for row in rows:
        hours = f"{row['elapsed_s'] / 3600:.2f} h" if row["elapsed_s"] else "-"
        values = " | ".join(f"{row['cases'][c]['mean_dice']:.3f}" for c in cases)
        lines.append(f"| {row['checkpoint']} | {row['step'] or '-'} | {hours} | {values} |")
    last = rows[-1]["cases"]
    lines += ["", "Per class, the last checkpoint:", "",
              "| case | " + " | ".join(CLASS_NAMES) + " |",
              "|---|" + "---|" * len(CLASS_NAMES)]  # fmt: skip
    for case in cases:
        dice = last[case]["dice"]
        cells = [f"{dice[n]:.2f}" if n in dice else "-" for n in CLASS_NAMES]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    shifted = [c for c in cases if "shifted_mean_dice" in last[c]]
    if shifted:
        mm = summary["frame_shift_mm"]
        lines += ["", f"The real subjects with the frame's centre also moved {mm:g} mm along "
                  "each axis both ways: mean Dice over the seven frames (lowest - highest):", "",
                  "| checkpoint | " + " | ".join(shifted) + " |",
                  "|---|" + "---|" * len(shifted)]  # fmt: skip
        for row in rows:
            cells = []
            for case in shifted:
                every = [row["cases"][case]["mean_dice"], *row["cases"][case]["shifted_mean_dice"]]
                cells.append(f"{np.mean(every):.3f} ({min(every):.3f} - {max(every):.3f})")
            lines.append(f"| {row['checkpoint']} | " + " | ".join(cells) + " |")
    lines += ["", f"![the checkpoint alone against training](bench/results/{picture.name})"]
    if compare is not None:
        beside = result_path(tag, f"_vs_{compare}.png").name
        lines += ["", f"Beside the run `--tag {compare}` (dashed), against training steps:", "",
                  f"![{tag} and {compare}](bench/results/{beside})"]  # fmt: skip
    if "run_history" in summary:
        lines += ["", f"![the run's own curve](bench/results/{curve.name})"]
    heading = "The checkpoint alone against training" + (f": {tag}" if tag else "")
    write_section("bench/encoder.py" + (f" --tag {tag}" if tag else ""), heading, lines)


def plot(rows: list[dict[str, Any]], cases: list[str], path: Path) -> None:
    figure, (curve, classes) = plt.subplots(1, 2, figsize=(13, 4.5))
    timeline = sorted(rows, key=lambda row: row["elapsed_s"] or 0.0)  # best and last among them
    hours = [(row["elapsed_s"] or 0.0) / 3600 for row in timeline]
    for case in cases:
        dice = [row["cases"][case]["mean_dice"] for row in timeline]
        curve.plot(hours, dice, "o-", label=case)
    curve.set(xlabel="training time of this stage (h)", ylabel="mean Dice, checkpoint alone",
              title="the encoder's latents, no refinement")  # fmt: skip
    curve.legend()
    names = list(rows[-1]["cases"][cases[0]]["dice"])
    x = np.arange(len(names))
    for offset, (row, label) in zip(
        (-0.2, 0.2), ((rows[0], "first"), (rows[-1], "last")), strict=True
    ):
        dice = row["cases"][cases[0]]["dice"]
        classes.bar(
            x + offset, [dice[n] for n in names], 0.4, label=f"{label}: {row['checkpoint']}"
        )
    classes.set_xticks(x, [n.replace("_", " ") for n in names], rotation=60)
    classes.set(ylabel="Dice", title=f"per class on {cases[0]}")
    classes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def plot_beside(
    rows: list[dict[str, Any]],
    other: list[dict[str, Any]],
    cases: list[str],
    tag: str,
    compare: str,
    path: Path,
) -> None:
    """Each case's curve against training steps, this run solid and `other` dashed (the
    checkpoints without a step, or the first row's start, at step 0)."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, case in enumerate(cases):
        colour = f"C{index}"
        for mine, style, name in ((rows, "o-", tag), (other, "s--", compare)):
            timeline = sorted(
                {(row["step"] if row["elapsed_s"] else 0): row for row in mine}.items()
            )  # a run's start (the checkpoint it began from) at step 0, each step once
            if case in timeline[0][1]["cases"]:
                steps = [step for step, _ in timeline]
                dice = [row["cases"][case]["mean_dice"] for _, row in timeline]
                axes.plot(steps, dice, style, color=colour, label=f"{case}, {name}")
    axes.set(xlabel="training steps of this stage", ylabel="mean Dice, checkpoint alone",
             title=f"{tag} (solid) and {compare} (dashed)")  # fmt: skip
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
