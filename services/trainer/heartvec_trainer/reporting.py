"""Where a training run reports each epoch: stderr, TensorBoard and, if asked, Weights & Biases."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from heartvec.errors import InputError
from heartvec.model.config import ModelConfig
from heartvec_trainer.config import TrainConfig


def log_epoch(record: dict[str, Any], writer: SummaryWriter | None, wandb_run: Any) -> None:
    line = f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"
    scalars = {"epoch/train_loss": record["train_loss"]}
    if "val" in record:
        val = record["val"]
        line += f", val loss {val['loss']:.4f}, val mean IoU {val['mean_iou']:.3f}"
        scalars.update({"val/loss": val["loss"], "val/mean_iou": val["mean_iou"]})
        scalars.update({f"val/iou/{name}": v["iou"] for name, v in val["per_class"].items()})
    tqdm.write(line, file=sys.stderr)
    for name, value in scalars.items():
        if writer is not None:
            writer.add_scalar(name, value, record["epoch"])
    if wandb_run is not None:
        wandb_run.log({**scalars, "epoch": record["epoch"]}, step=record["step"])


def start_wandb(run_dir: Path, preset: str, model: ModelConfig, config: TrainConfig) -> Any:
    if not os.environ.get("WANDB_API_KEY"):
        raise InputError("--wandb", "set WANDB_API_KEY in the environment (never in a file)")
    try:
        import wandb
    except ImportError as e:
        raise InputError("--wandb", "wandb is not installed: pip install 'heartvec[wandb]'") from e
    return wandb.init(
        project="heartvec",
        dir=str(run_dir),
        name=run_dir.name,
        config={"preset": preset, "model": model.as_dict(), "train": config.as_dict()},
    )
