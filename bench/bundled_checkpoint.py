"""The bundled checkpoint's record in BENCHMARKS.md: recipe, training time, curve, validation.

Reads the training run (history.json, TensorBoard event times, training_curve.png), evaluates
the exported checkpoint on the run's validation split with `heartvec evaluate`, and rewrites
its section of BENCHMARKS.md; the curve is copied to bench/results/bundled_training_curve.png.
A checkpoint trained in stages (`--init-from` the previous one) names its recipe and the
records of the stages before (`--parent`, JSON files in bench/results, oldest first: the run
folders of earlier sessions are gone, their figures are not). A run folder brought back from a
lent GPU may hold only history.json and training_curve.png: the training time is then the
history's own clock.

Usage: .venv/bin/python bench/bundled_checkpoint.py --run RUN_DIR --data PREPARED_DIR
           [--checkpoint shared/heartvec/checkpoints/heartvec-small.pt] [--recipe CONFIG.yaml
           --parent bench/results/bundled_stage1.json bench/results/bundled_stage2.json
           --machine TEXT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks_md import save_json, write_section
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from heartvec.settings import BUNDLED_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
HEARTVEC = str(Path(sys.executable).parent / "heartvec")
RECIPE = REPO / "services" / "trainer" / "configs" / "small-phantoms.yaml"


def training_hours(run: Path, history: list[dict[str, Any]]) -> float:
    """Wall hours spent training: the span of each TensorBoard event file (one per process
    start, so the pauses between a stop and its `--resume` are not counted), else the
    history's last `elapsed_s` (resumed runs count their earlier time there too)."""
    if not (run / "tensorboard").is_dir():
        return float(history[-1]["elapsed_s"]) / 3600
    total = 0.0
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        times = [e.wall_time for tag in accumulator.Tags()["scalars"]
                 for e in accumulator.Scalars(tag)]  # fmt: skip
        if times:
            total += max(times) - min(times)
    return total / 3600


def _duration(hours: float) -> str:
    """'1.68 h', or '5.9 min' under an hour."""
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def _data_description(prepared: Path) -> str:
    """'N phantoms, seeds A-B, SIZE^3 at S mm, T train / V validation' from a prepared folder."""
    names = sorted(prepared.glob("*.npz"))
    seeds = sorted(int(m.group(1)) for n in names if (m := re.search(r"_s(\d+)$", n.stem)))
    counts = {}
    for split in ("train", "val"):
        rows = (prepared / f"{split}.csv").read_text().splitlines()
        counts[split] = sum(1 for row in rows[1:] if row.strip())
    grid = ""
    if names:
        with np.load(names[0]) as first:
            grid = f", {int(first['shape'][0])}^3 at {float(first['spacing'][0]):g} mm"
    span = f", seeds {seeds[0]}-{seeds[-1]}" if seeds else ""
    return (
        f"{len(names)} phantoms{span}{grid}, {counts['train']} train / {counts['val']} validation"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the run's config YAML")
    parser.add_argument(
        "--parent", type=Path, nargs="+", default=[],
        help="JSON records of the stages before, oldest first",
    )  # fmt: skip
    parser.add_argument(
        "--machine", default="the development machine (2 CPU cores, no GPU)", help="where it ran"
    )
    args = parser.parse_args()
    history: list[dict[str, Any]] = json.loads((args.run / "history.json").read_text())
    evaluation = json.loads(
        subprocess.run(
            [HEARTVEC, "evaluate", "--checkpoint", str(args.checkpoint), "--data",
             str(args.data), "--device", "cpu"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    shutil.copyfile(args.run / "training_curve.png", out / "bundled_training_curve.png")
    save_json(out / "bundled_checkpoint.json", evaluation)
    validated = [h for h in history if "val" in h]
    best = max(validated, key=lambda h: h["val"]["mean_iou"])
    size_mb = args.checkpoint.stat().st_size / 2**20
    recipe_path = args.recipe.resolve().relative_to(REPO)
    lines = [
        f"Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} by "
        "`bench/bundled_checkpoint.py`.",
        "",
    ]
    stage = len(args.parent) + 1
    if args.parent:
        count = {2: "two", 3: "three", 4: "four"}.get(stage, str(stage))
        earlier = []
        for number, path in enumerate(args.parent, start=1):
            parent = json.loads(path.read_text())
            earlier.append(
                f"**Stage {number}** (`{parent['recipe']}`, seed 0; data: {parent['data']}; "
                f"{parent['machine']}): {parent['steps']:,} steps, {parent['epochs']} epochs, "
                f"{_duration(parent['hours'])}, best validation mean IoU "
                f"{parent['best_val_mean_iou']:.3f} (epoch {parent['best_epoch']}; sha256 "
                f"`{parent['sha256'][:16]}...`)."
            )
        lines += [
            f"Trained in {count} stages, each continuing the one before with `--init-from`. "
            + " ".join(earlier)
            + f" **Stage {stage}** below.",
            "",
        ]
    lines += [
        f"Recipe (`{recipe_path}`, seed 0; data: {_data_description(args.data)}; {args.machine}):",
        "",
        "```bash",
        *[line[2:] for line in args.recipe.read_text().splitlines() if line.startswith("#   ")],
        "```",
        "",
        "| what | value |",
        "|---|---|",
        f"| checkpoint | `{args.checkpoint.resolve().relative_to(REPO)}`, {size_mb:.1f} MB "
        f"(float16), sha256 `{evaluation['checkpoint_sha256'][:16]}...` |",
        f"| training{f' (stage {stage})' if args.parent else ''} | {history[-1]['step']:,} "
        f"steps, {history[-1]['epoch']} epochs, {_duration(training_hours(args.run, history))} |",
        f"| best validation mean IoU (all classes, volumetric) | {best['val']['mean_iou']:.3f} "
        f"(epoch {best['epoch']}) |",
        f"| exported checkpoint on validation: mean IoU / near-surface IoU / whole-heart IoU | "
        f"{evaluation['mean_iou']:.3f} / {evaluation['mean_iou_near']:.3f} / "
        f"{evaluation['heart_iou']:.3f} |",
        "| per-class volumetric IoU (validation) | "
        + ", ".join(f"{k} {v['iou_vol']:.2f}" for k, v in evaluation["per_class"].items())
        + " |",
        "",
        "![training curve of the bundled checkpoint](bench/results/bundled_training_curve.png)",
    ]
    write_section("bench/bundled_checkpoint.py", "The bundled checkpoint", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
