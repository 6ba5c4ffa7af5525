"""What `heartvec reconstruct --frame-search N` gives: the reconstruction with and without the
search over the frame's centre and scale, with the encoder alone and with refinement, on the
real subjects (B, which the bundled checkpoint never trained on, first) and unseen phantoms:
mean Dice and HD95 against the input, the frame stage's time and the frame it chose. Updates
BENCHMARKS.md ("Frame search in reconstruct") and a PNG.

Usage: .venv/bin/python bench/frame_search_reconstruct.py [--frames 0 48] [--steps 0 200 800]
       [--resolution 256] [--seeds 5000 5001] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from benchmarks_md import measured, save_json, write_section
from cases import subject_cases
from encoder import RESULTS
from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.reconstruction import defaults
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import BUNDLED_CHECKPOINT

SAVED = RESULTS / "frame_search_reconstruct.json"
PICTURE = RESULTS / "frame_search_reconstruct.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT)
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 48])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 200, defaults.REFINE_STEPS])
    parser.add_argument("--resolution", type=int, default=defaults.RESOLUTION)
    parser.add_argument("--seeds", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(SAVED.read_text()))
        return 0
    loaded = load_model(args.checkpoint)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = subject_cases(folder, args.seeds)
        runs = [(c, f, s) for c in cases for s in args.steps for f in args.frames]
        for name, frames, steps in tqdm(runs, desc="reconstructions"):
            path, table = cases[name]
            settings = ReconstructSettings(
                resolution=args.resolution, refine=RefineSettings(steps=steps), frame_search=frames
            )
            report = reconstruct(path, folder / "out", load_label_table(table), loaded, settings)
            search = report["frame_search"] or {}
            rows.append({
                "case": name, "frames": frames, "steps": steps,
                "mean_dice": report["summary"]["mean_dice"],
                "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                "dice": {c: m["dice"] for c, m in report["classes"].items()},
                "frame_s": report["timings"]["frame_s"],
                "total_s": report["timings"]["total_s"],
                "frames_scored": search.get("frames", 1),
                "shift_mm": search.get("shift_mm", [0.0, 0.0, 0.0]),
                "scale_factor": search.get("scale_factor", 1.0),
                "centred_score": search.get("centred_score"),
                "score": search.get("score"),
            })  # fmt: skip
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "dice"}), flush=True)
    summary = {
        **measured(),
        "checkpoint": args.checkpoint.name,
        "sha256": loaded.sha256,
        "resolution": args.resolution,
        "rows": rows,
    }
    save_json(SAVED, summary)
    write_report(summary)
    return 0


def write_report(summary: dict[str, Any]) -> None:
    plot(summary)
    rows = summary["rows"]
    frames = sorted({r["frames"] for r in rows})
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by "
        f"`bench/frame_search_reconstruct.py`: `{summary['checkpoint']}` (sha256 "
        f"{summary['sha256'][:12]}...), `heartvec reconstruct` at resolution "
        f"{summary['resolution']} with `--frame-search` 0 (the frame centred on the input's box) "
        f"and {', '.join(str(f) for f in frames if f)} frames, each at the refinement steps "
        "shown. Real B was never trained on; real A shaped the bundled checkpoint's last stages; "
        "the phantoms' seeds are unseen.",
        "",
        "| case | refine steps | frames | mean Dice | HD95 mm | frame stage s | total s "
        "| chosen shift mm, scale | score centred -> chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        chosen = f"{r['shift_mm']}, x{r['scale_factor']:.3f}" if r["frames"] > 1 else "-"
        scores = f"{r['centred_score']:.3f} -> {r['score']:.3f}" if r["frames"] > 1 else "-"
        lines.append(
            f"| {r['case']} | {r['steps']} | {r['frames']} ({r['frames_scored']} scored) "
            f"| {r['mean_dice']:.3f} | {r['mean_hd95_mm']:.2f} | {r['frame_s']:.1f} "
            f"| {r['total_s']:.1f} | {chosen} | {scores} |"
        )
    lines += ["", f"![Dice against refinement steps](bench/results/{PICTURE.name})"]
    write_section("bench/frame_search_reconstruct.py", "Frame search in reconstruct", lines)


def plot(summary: dict[str, Any]) -> None:
    rows = summary["rows"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    figure, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 3.6), squeeze=False)
    for axis, case in zip(axes[0], cases, strict=True):
        for frames in sorted({r["frames"] for r in rows}):
            mine = sorted((r for r in rows if r["case"] == case and r["frames"] == frames),
                          key=lambda r: r["steps"])  # fmt: skip
            label = "centred" if frames <= 1 else f"search, {frames} frames"
            axis.plot([r["steps"] for r in mine], [r["mean_dice"] for r in mine], "o-", label=label)
        axis.set_title(case)
        axis.set_xlabel("refinement steps")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean Dice")
    axes[0][0].legend()
    figure.suptitle(f"{summary['checkpoint']}: frame search in reconstruct ({summary['date']})")
    figure.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    figure.savefig(PICTURE, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
