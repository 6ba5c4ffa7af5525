"""What a training run saves and restores: its checkpoints' contents and random generators."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from heartvec.errors import StorageError
from heartvec.labels import CLASS_NAMES
from heartvec.model.checkpoint import load_checkpoint, save_checkpoint
from heartvec.model.config import ModelConfig
from heartvec_trainer.config import TrainConfig


def training_state(
    preset: str,
    model_config: ModelConfig,
    config: TrainConfig,
    normalization: dict[str, float | None],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """What every checkpoint of the run holds; the caller adds where the run is."""
    return {
        "preset": preset,
        "model_config": model_config.as_dict(),
        "train_config": config.as_dict(),
        "class_names": list(CLASS_NAMES),
        "normalization": normalization,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


def load_resume_state(path: Path) -> dict[str, Any]:
    """checkpoint-last.pt for --resume, every tensor on the CPU whatever the training device.

    The RNG states must be CPU byte tensors (`torch.cuda.set_rng_state_all` refuses a CUDA
    tensor); the model and optimizer states are copied to their device by `load_state_dict`.
    """
    return load_checkpoint(path, map_location="cpu")


def save(path: Path, state: dict[str, Any]) -> None:
    """Save, or say loudly why not and keep training (the previous file stays intact)."""
    try:
        save_checkpoint(path, state)
    except StorageError as e:
        tqdm.write(f"heartvec: warning: {e}", file=sys.stderr)


def rng_state() -> dict[str, Any]:
    numpy_state: Any = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Put back the generators `_rng_state` saved, from tensors on any device.

    torch's setters take CPU byte tensors only ("RNG state must be a torch.ByteTensor"). The
    CUDA states go back to the GPUs this process sees, as many as were saved.
    """
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if device.type == "cuda" and state["cuda"]:
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved.to("cpu", torch.uint8), index)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(state["python"])
