"""`heartvec export-checkpoint RUN/checkpoint-best.pt OUT.pt`: a checkpoint for shipping.

Keeps what reconstruction needs (weights, model config, class names, the data's normalization,
training settings and history for provenance), drops the optimizer and RNG state, and stores
the weights in float16 (half the size; reconstruction computes in float32).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec export-checkpoint",
        description="Write a weights-only float16 copy of a training checkpoint for shipping.",
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by heartvec train")
    parser.add_argument("out", type=Path, help="where to write the exported checkpoint")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    dtype = torch.float32 if args.float32 else torch.float16
    weights = {
        name: tensor.to(dtype) if tensor.is_floating_point() else tensor
        for name, tensor in state["model"].items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, {**{k: state[k] for k in KEPT if k in state}, "model": weights})
    size_mb = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.1f} MB, epoch {state.get('epoch')}, {dtype})")
    return 0
