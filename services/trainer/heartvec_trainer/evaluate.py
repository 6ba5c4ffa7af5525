"""`heartvec evaluate --checkpoint CKPT --data DIR`: validation metrics of a checkpoint as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from heartvec.model.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from heartvec.model.config import ModelConfig
from heartvec_trainer.config import TrainConfig
from heartvec_trainer.data import PreparedShapes, read_split
from heartvec_trainer.metrics import evaluate_model
from heartvec_trainer.train import autocast_dtype


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec evaluate",
        description="Print metrics JSON (per-class sign IoU on volume and near points, loss "
        "terms) of a checkpoint on a split of a prepared folder.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared folder with val.csv")
    parser.add_argument("--split", default="val", help="val (default) or train")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = load_checkpoint(args.checkpoint, map_location=device)
    model = model_from_checkpoint(state).to(device)
    config = TrainConfig(**{**state["train_config"], "batch_size": args.batch_size, "workers": 0})
    model_config = ModelConfig(**state["model_config"])
    files = read_split(args.data, args.split)
    loader = DataLoader(
        PreparedShapes(files, model_config.num_inputs, config, evaluation=True),
        batch_size=config.batch_size,
    )
    metrics = evaluate_model(model, loader, config, device, autocast_dtype(config, device))
    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": file_sha256(args.checkpoint),
        "preset": state.get("preset"),
        "epoch": state.get("epoch"),
        "split": args.split,
        **metrics,
    }
    print(json.dumps(report, indent=2))
    return 0
