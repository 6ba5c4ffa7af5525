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
the checkpoint draws lie where it used to predict D (D > 0 grows every class). The bundled
checkpoint's training leaves its shapes slightly too small: D = 0.005, chosen on training
phantoms by bench/level_offset.py, raised Dice without refinement on unseen ones from 0.682 to
0.732. Recorded (summed over exports) as `level_offset`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from heartvec.errors import InputError
from heartvec.model.checkpoint import load_checkpoint, save_checkpoint

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
        type=float,
        default=0.0,
        help="move the zero level: predictions drop by this much (> 0 grows every class; "
        "bench/level_offset.py measures which)",
    )
    return parser


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
    if args.level_offset:
        weights[HEAD_BIAS] = (weights[HEAD_BIAS].double() - args.level_offset).to(dtype)
        kept["level_offset"] = state.get("level_offset", 0.0) + args.level_offset
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, {**kept, "model": weights})
    size_mb = args.out.stat().st_size / 2**20
    averaged = f", the average of {len(states)}" if len(states) > 1 else ""
    print(f"wrote {args.out} ({size_mb:.1f} MB, epoch {state.get('epoch')}, {dtype}{averaged})")
    return 0
