"""The bundled checkpoint's record in BENCHMARKS.md: recipe, training time, curve, validation.

Reads the training run (history.json, TensorBoard event times, training_curve.png), evaluates
the exported checkpoint on the run's validation split with `heartvec evaluate`, and rewrites
its section of BENCHMARKS.md; the curve is copied to bench/results/bundled_training_curve.png.

Usage: .venv/bin/python bench/bundled_checkpoint.py --run RUN_DIR --data PREPARED_DIR
           [--checkpoint shared/heartvec/checkpoints/heartvec-small.pt]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks_md import write_section
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from heartvec.settings import BUNDLED_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
HEARTVEC = str(Path(sys.executable).parent / "heartvec")
RECIPE = REPO / "services" / "trainer" / "configs" / "small-phantoms.yaml"


def training_hours(run: Path) -> float:
    """Wall hours spent training: the span of each TensorBoard event file (one per process
    start, so the pauses between a stop and its `--resume` are not counted)."""
    total = 0.0
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        times = [e.wall_time for tag in accumulator.Tags()["scalars"]
                 for e in accumulator.Scalars(tag)]  # fmt: skip
        if times:
            total += max(times) - min(times)
    return total / 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED_CHECKPOINT)
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
    (out / "bundled_checkpoint.json").write_text(json.dumps(evaluation, indent=2))
    validated = [h for h in history if "val" in h]
    best = max(validated, key=lambda h: h["val"]["mean_iou"])
    recipe = [line[2:] for line in RECIPE.read_text().splitlines() if line.startswith("#   ")]
    size_mb = args.checkpoint.stat().st_size / 2**20
    lines = [
        f"Written {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC} by "
        "`bench/bundled_checkpoint.py`. Trained on the development machine (2 CPU cores, no GPU).",
        "",
        "Recipe (`services/trainer/configs/small-phantoms.yaml`, seed 0; data: 48 phantoms, "
        "seeds 1000-1047, 128^3 at 2 mm, 44 train / 4 validation):",
        "",
        "```bash",
        *recipe,
        "```",
        "",
        "| what | value |",
        "|---|---|",
        f"| checkpoint | `{args.checkpoint.relative_to(REPO)}`, {size_mb:.1f} MB (float16), "
        f"sha256 `{evaluation['checkpoint_sha256'][:16]}...` |",
        f"| training | {history[-1]['step']:,} steps, {history[-1]['epoch']} epochs, "
        f"{training_hours(args.run):.2f} h on CPU |",
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
