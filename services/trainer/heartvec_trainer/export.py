"""`heartvec export-checkpoint RUN/checkpoint-best.pt OUT.pt`: a checkpoint for shipping.

Keeps what reconstruction needs (weights, model config, class names, the data's normalization,
training settings and history for provenance), drops the optimizer and RNG state, and stores
the weights in float16 (half the size; reconstruction computes in float32).

Given several checkpoints of one run (`A.pt B.pt ... OUT.pt`), it writes the average of their
weights (stochastic weight averaging), which steadies a run whose checkpoints swing: on the CPU
run of the bundled checkpoint, 4 snapshots of epochs 106-120 averaged matched the Dice of
epoch 130's, though at the end of the cosine decay the last checkpoint beat the average.
The other fields come from the last one.

`--level-offset D` moves the decoder's zero level: the head's bias drops by D, so the surfaces
the checkpoint draws lie where it used to predict D (D > 0 grows every class);
`--level-offset NAME=D` moves one class's (several, comma-separated or repeated; later ones
win). The bundled checkpoint's training leaves most shapes slightly too small:
bench/level_offset.py measures Dice without refinement against the offset and chooses one per
class on training phantoms. Recorded per class (summed over exports) as `level_offset`.

`--scale-mm MM` sets the frame reconstruction encodes hearts in: MM of the input is mapped to the
normalized cube's width (the training data's was `heartvec prepare --scale-mm`, 100 by default),
so a smaller MM draws a heart larger in the frame. Recorded as `normalization.scale_mm`, the
training data's kept as `normalization.trained_scale_mm`. Every frame search on the real subjects
and phantoms chose a smaller scale than the bundled checkpoint's training data
(BENCHMARKS.md "Frame search in reconstruct"); bench/encoder.py measures a choice.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from heartvec.errors import InputError
from heartvec.model.checkpoint import level_offsets_of, load_checkpoint, save_checkpoint
from heartvec.normalization import DEFAULT_SCALE_MM

KEPT = (
    "preset",
    "model_config",
    "train_config",
    "class_names",
    "normalization",
    "epoch",
    "step",
    "best_iou",
    "history",
    "level_offset",
)
HEAD_BIAS = "head.1.bias"  # VecSetAutoencoder.head = LayerNorm, Linear(width, classes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec export-checkpoint",
        description="Write a weights-only float16 copy of a training checkpoint for shipping.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help="a checkpoint written by heartvec train; several: their weights are averaged",
    )
    parser.add_argument("out", type=Path, help="where to write the exported checkpoint")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights")
    parser.add_argument(
        "--level-offset",
        action="append",
        default=[],
        metavar="D or NAME=D[,NAME=D...]",
        help="move the zero level: predictions drop by D (> 0 grows the shape), for every class "
        "or the one named; repeatable (bench/level_offset.py measures which)",
    )
    parser.add_argument(
        "--scale-mm",
        type=float,
        metavar="MM",
        help="the frame reconstruction encodes hearts in, in mm (default: the training data's; "
        "smaller draws a heart larger)",
    )
    return parser


def frame_scale(normalization: dict[str, float | None], scale_mm: float) -> dict[str, float | None]:
    """The checkpoint's normalization with `--scale-mm`: a fixed scale of `scale_mm`, the training
    data's kept (the first one, over several exports)."""
    if not (np.isfinite(scale_mm) and scale_mm > 0):
        raise InputError("--scale-mm", f"{scale_mm}: must be a positive number of mm")
    trained = normalization.get("trained_scale_mm", normalization.get("scale_mm"))
    if trained is None:
        raise InputError(
            "--scale-mm", "the checkpoint was trained with each shape fitted to the cube "
            "(prepare --normalize fit): it has no fixed scale to change"
        )  # fmt: skip
    return {"scale_mm": float(scale_mm), "trained_scale_mm": float(trained)}


def level_offsets(values: list[str], class_names: Sequence[str]) -> dict[str, float]:
    """`--level-offset` values -> the offset of each class (0 where none is given)."""
    offsets = dict.fromkeys(class_names, 0.0)
    for item in (part.strip() for value in values for part in value.split(",")):
        name, _, number = item.rpartition("=")
        if name and name not in offsets:
            raise InputError(
                "--level-offset", f"unknown class {name!r}; the checkpoint's: {list(offsets)}"
            )
        try:
            offset = float(number)
        except ValueError:
            raise InputError("--level-offset", f"{item!r} is not D or NAME=D") from None
        if not np.isfinite(offset):
            raise InputError("--level-offset", f"{item!r}: the offset must be finite")
        for key in [name] if name else offsets:
            offsets[key] = offset
    return offsets


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    states = [load_checkpoint(path) for path in args.checkpoint]
    state = states[-1]
    for path, other in zip(args.checkpoint, states, strict=True):
        if other["model_config"] != state["model_config"] or list(other["class_names"]) != list(
            state["class_names"]
        ):
            raise InputError(
                path, f"model or classes differ from {args.checkpoint[-1]}: cannot average them"
            )
    dtype = torch.float32 if args.float32 else torch.float16
    weights = {
        name: (
            torch.stack([s["model"][name].double() for s in states]).mean(dim=0).to(dtype)
            if tensor.is_floating_point()
            else tensor
        )
        for name, tensor in state["model"].items()
    }
    kept = {k: state[k] for k in KEPT if k in state}
    offsets = level_offsets(args.level_offset, state["class_names"])
    if any(offsets.values()):
        shift = torch.tensor(list(offsets.values()), dtype=torch.float64)
        weights[HEAD_BIAS] = (weights[HEAD_BIAS].double() - shift).to(dtype)
        earlier = level_offsets_of(state)
        kept["level_offset"] = {name: earlier[name] + offsets[name] for name in offsets}
    if args.scale_mm is not None:
        recorded = state.get("normalization", {"scale_mm": DEFAULT_SCALE_MM})
        kept["normalization"] = frame_scale(recorded, args.scale_mm)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, {**kept, "model": weights})
    size_mb = args.out.stat().st_size / 2**20
    averaged = f", the average of {len(states)}" if len(states) > 1 else ""
    print(f"wrote {args.out} ({size_mb:.1f} MB, epoch {state.get('epoch')}, {dtype}{averaged})")
    return 0
