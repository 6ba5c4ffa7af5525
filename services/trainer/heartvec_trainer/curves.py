"""The training curve picture: loss and validation IoU per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Train/val loss (log) and validation mean IoU against epoch, written as a PNG."""
    epochs = [r["epoch"] for r in history]
    validated = [r for r in history if "val" in r]
    figure, (losses, iou) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    losses.plot(epochs, [r["train_loss"] for r in history], label="train")
    losses.plot(
        [r["epoch"] for r in validated],
        [r["val"]["loss"] for r in validated],
        marker="o",
        label="validation",
    )
    losses.set(yscale="log", xlabel="epoch", ylabel="loss", title="loss")
    losses.legend()
    iou.plot(
        [r["epoch"] for r in validated],
        [r["val"]["mean_iou"] for r in validated],
        marker="o",
        color="C2",
    )
    iou.set(ylim=(0, 1), xlabel="epoch", ylabel="mean sign IoU", title="validation mean IoU")
    figure.savefig(path, dpi=90)
    plt.close(figure)
