"""Checkpoints side by side, in one run: each with the defaults (over several refinement seeds)
and alone (`--refine-steps 0`), on real subject B (never trained on), real subject A (marked when
a checkpoint's training saw hearts made from it) and unseen phantoms (256^3 at 1 mm), per class.
What decides whether a new checkpoint (or a re-export with a level offset) ships.

Usage: .venv/bin/python bench/checkpoints.py NAME=CKPT [NAME=CKPT ...] [--seeds 0 1 2]
       [--phantoms 5000 5001] [--trained-on-a] [--report-only]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import write_section
from encoder import REAL
from reconstruct import REPO, cpu_description
from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.phantom import make_phantom
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec_testing.volumes import write_nifti

SAVED = REPO / "bench" / "results" / "checkpoints.json"
MODES = ("defaults", "alone")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", help="NAME=PATH, in the order shown")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phantoms", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument("--trained-on-a", action="store_true", help="some of them saw subject A")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads(SAVED.read_text()))
        return 0
    named = [spec.split("=", 1) for spec in args.checkpoints]
    if not named or any(len(pair) != 2 for pair in named):
        parser.error("give the checkpoints as NAME=PATH")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = {name: spec for name, spec in REAL.items() if spec[0].is_file()}
        for seed in args.phantoms:
            labels, affine = make_phantom(seed, size=256, spacing=1.0)
            path = write_nifti(folder / f"phantom_s{seed}.nii.gz", labels, affine)
            cases[f"phantom {seed}"] = (path, "default")
        jobs = [
            (name, Path(path), case, mode, seed)
            for name, path in named
            for case in cases
            for mode in MODES
            for seed in (args.seeds if mode == "defaults" else [0])
        ]
        loaded: dict[str, Any] = {}
        for name, path, case, mode, seed in tqdm(jobs, desc="reconstructions"):
            if name not in loaded:
                loaded = {name: load_model(path)}  # one model in memory at a time
            steps = {} if mode == "defaults" else {"refine": RefineSettings(steps=0)}
            settings = ReconstructSettings(seed=seed, **steps)  # type: ignore[arg-type]
            source, table = cases[case]
            report = reconstruct(source, folder / "out", load_label_table(table), loaded[name],
                                 settings)  # fmt: skip
            runs.append({
                "checkpoint": name, "sha256": loaded[name].sha256, "case": case, "mode": mode,
                "seed": seed, "mean_dice": report["summary"]["mean_dice"],
                "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                "dice": {c: m["dice"] for c, m in report["classes"].items()},
                "total_s": report["timings"]["total_s"],
            })  # fmt: skip
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "dice"}), flush=True)
    summary = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_description(),
        "trained_on_a": args.trained_on_a,
        "seeds": args.seeds,
        "runs": runs,
    }
    SAVED.write_text(json.dumps(summary, indent=2))
    write_report(summary)
    return 0


def grouped(summary: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(checkpoint, case, mode) -> the mean over its seeds of Dice, HD95 and per-class Dice, with
    the mean Dice's range."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        groups.setdefault((run["checkpoint"], run["case"], run["mode"]), []).append(run)
    result = {}
    for key, runs in groups.items():
        dice = [r["mean_dice"] for r in runs]
        result[key] = {
            "sha256": runs[0]["sha256"],
            "mean_dice": float(np.mean(dice)),
            "range": (min(dice), max(dice)),
            "mean_hd95_mm": float(np.mean([r["mean_hd95_mm"] for r in runs])),
            "dice": {c: float(np.mean([r["dice"][c] for r in runs])) for c in runs[0]["dice"]},
            "seeds": len(runs),
        }
    return result


def write_report(summary: dict[str, Any]) -> None:
    table = grouped(summary)
    names = list(dict.fromkeys(k[0] for k in table))
    cases = list(dict.fromkeys(k[1] for k in table))
    a_note = " (its training saw hearts made from A)" if summary["trained_on_a"] else ""
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/checkpoints.py`: each "
        f"checkpoint with the defaults (resolution 256, 400 refinement steps; the mean over "
        f"refinement seeds {summary['seeds']} [their range]) and alone (`--refine-steps 0`, "
        f"resolution 256). Real B was never trained on; real A{a_note}. Phantoms: 256^3 at 1 mm, "
        "seeds no training set holds.",
        "",
        "| checkpoint | sha256 | mode | " + " | ".join(cases) + " |",
        "|---|---|---|" + "---|" * len(cases),
    ]
    for name in names:
        for mode in MODES:
            cells = []
            for case in cases:
                row = table.get((name, case, mode))
                if row is None:
                    cells.append("-")
                    continue
                low, high = row["range"]
                spread = f" [{low:.3f}-{high:.3f}]" if row["seeds"] > 1 else ""
                cells.append(f"{row['mean_dice']:.3f}{spread} / {row['mean_hd95_mm']:.2f} mm")
            sha = table[(name, cases[0], mode)]["sha256"][:12]
            lines.append(f"| {name} | `{sha}` | {mode} | " + " | ".join(cells) + " |")
    classes = list(dict.fromkeys(c for row in table.values() for c in row["dice"]))
    for mode in MODES:
        lines += ["", f"Per class, {mode} (mean Dice):", "",
                  "| checkpoint | case | " + " | ".join(classes) + " |",
                  "|---|---|" + "---|" * len(classes)]  # fmt: skip
        for name in names:
            for case in cases:
                dice = table[(name, case, mode)]["dice"]
                cells = [f"{dice[c]:.2f}" if c in dice else "-" for c in classes]
                lines.append(f"| {name} | {case} | " + " | ".join(cells) + " |")
    lines += ["", "![checkpoints](bench/results/checkpoints.png)"]
    write_section("bench/checkpoints.py", "Checkpoints side by side", lines)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    width = 0.8 / len(names)
    for axis, mode in zip(axes, MODES, strict=True):
        for index, name in enumerate(names):
            values = [table[(name, case, mode)]["mean_dice"] for case in cases]
            axis.bar(np.arange(len(cases)) + index * width, values, width, label=name)
        axis.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2, cases)
        low = 0.85 if mode == "defaults" else 0.4
        axis.set(ylim=(low, 1.0), ylabel="mean Dice", title=f"{mode}")
        axis.legend(fontsize="small")
    figure.suptitle("checkpoints side by side (real B never trained on)")
    figure.savefig(SAVED.with_suffix(".png"), dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
