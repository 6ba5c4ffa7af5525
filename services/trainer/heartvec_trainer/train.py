"""`heartvec train --data DIR --out RUN_DIR`: train the VecSet autoencoder, alone or under torchrun.

The loop reads top to bottom: data -> model -> optimizer and schedule -> (resume) -> epochs of
steps -> validation -> checkpoints. Rank 0 logs and saves; every rank trains.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from heartvec.errors import InputError
from heartvec.model.checkpoint import load_checkpoint
from heartvec.model.config import ModelConfig
from heartvec.model.vecset import VecSetAutoencoder
from heartvec.settings import Settings
from heartvec_trainer import distributed
from heartvec_trainer.config import TrainConfig, load_config
from heartvec_trainer.curves import plot_history
from heartvec_trainer.data import (
    EpochTagged,
    PreparedShapes,
    end_workers,
    normalization_of,
    read_split,
)
from heartvec_trainer.folders import output_folder
from heartvec_trainer.losses import training_loss
from heartvec_trainer.metrics import evaluate_model
from heartvec_trainer.reporting import log_epoch, start_wandb
from heartvec_trainer.run_state import (
    load_resume_state,
    restore_rng,
    rng_state,
    save,
    training_state,
)
from heartvec_trainer.stopping import (
    EXIT_INTERRUPTED,
    StopCheck,
    StopSignals,
    TrainingClock,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec train",
        description="Train the VecSet autoencoder on a folder prepared by `heartvec prepare` and "
        "split by `heartvec split`. Works under torchrun (DDP). Writes RUN_DIR/checkpoint-last.pt "
        "(every epoch), RUN_DIR/checkpoint-best.pt (best validation mean IoU), "
        "RUN_DIR/history.json, RUN_DIR/training_curve.png and TensorBoard logs. On SIGTERM or "
        f"SIGUSR1 it finishes the step, saves RUN_DIR/checkpoint-last.pt and exits with status "
        f"{EXIT_INTERRUPTED}; --resume continues from that step.",
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="prepared folder with train/val.csv"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--config", default="small", help="preset (tiny, small, base) or a YAML file"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--accumulation", type=int, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process")
    parser.add_argument("--val-every", type=int, help="validate every N epochs (0: never)")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop after this much training time (validate and save first); the learning "
        "rate decays over this time when it ends before the epochs do",
    )
    parser.add_argument(
        "--device",
        help="cpu or cuda (default: cuda when available); cuda where CUDA does not work fails",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from RUN_DIR/checkpoint-last.pt if present"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from the weights of this checkpoint (e.g. an exported one); a fresh "
        "optimizer and schedule, unlike --resume",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log to Weights & Biases (needs WANDB_API_KEY)"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "epochs": "epochs",
        "batch_size": "batch_size",
        "accumulation": "accumulation",
        "lr": "learning_rate",
        "workers": "workers",
        "val_every": "val_every",
        "seed": "seed",
        "time_limit": "time_limit_s",
    }
    return {
        field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset, model_config, train_config = load_config(args.config)
    train_config = replace(train_config, **_overrides(args))
    runtime = distributed.start(args.device, Settings().dist_backend)
    try:
        with StopSignals() as signals:
            outcome = train(
                args.data,
                args.out,
                preset,
                model_config,
                train_config,
                runtime,
                signals,
                args.resume,
                args.wandb,
                args.init_from,
            )
    finally:
        distributed.stop(runtime)
    return EXIT_INTERRUPTED if outcome.interrupted_by else 0


def learning_rate_factor(
    step: int, config: TrainConfig, total_steps: int, time_fraction: float = 0.0
) -> float:
    """Linear warm-up to 1, then cosine decay to `min_lr_ratio`, by steps or by the fraction of
    the time limit spent, whichever is further along. The time's cosine caps the warm-up too,
    so a run whose time limit ends within the warm-up (a slow machine) still ends low."""
    warm = (step + 1) / config.warmup_steps if step < config.warmup_steps else 1.0
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    progress = max(0.0, min(1.0, max(progress, time_fraction)))
    decayed = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * progress)
    )
    return min(warm, decayed)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs (or when asked), None (fp32) on CPUs."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def make_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, fused: bool = True
) -> torch.optim.AdamW:
    """AdamW as training uses it. `fused`: one kernel over all parameters instead of a dozen
    small operations per parameter tensor, the same update (`bench/train.py` compares them)."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
        fused=fused and device.type in ("cpu", "cuda"),
    )


@dataclass
class Outcome:
    """What a call of `train` did: the per-epoch history (validation metrics included), and the
    signal that stopped it early, if one did (checkpoint-last.pt then holds where it stopped)."""

    history: list[dict[str, Any]]
    interrupted_by: str | None = None


def train(
    data_dir: Path,
    run_dir: Path,
    preset: str,
    model_config: ModelConfig,
    config: TrainConfig,
    runtime: distributed.Runtime,
    signals: StopSignals,
    resume: bool = False,
    use_wandb: bool = False,
    init_from: Path | None = None,
) -> Outcome:
    """Train; a stop signal `signals` records (the caller has entered it) ends the run after
    the current step, with a checkpoint."""
    device = runtime.device
    # every split the run needs is checked before any work: no crash at the first validation
    train_files = read_split(data_dir, "train")
    val_files = read_split(data_dir, "val") if config.val_every > 0 else []
    normalization = normalization_of(train_files)
    output_folder(run_dir)
    wandb_run = start_wandb(run_dir, preset, model_config, config) if use_wandb else None

    torch.manual_seed(config.seed)
    model = VecSetAutoencoder(model_config).to(device)
    dataset = PreparedShapes(train_files, model_config.num_inputs, config)
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=config.seed
    )
    tagged = EpochTagged(sampler, len(dataset), config.repeats)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=tagged,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        drop_last=len(tagged) >= config.batch_size,
        persistent_workers=config.workers > 0,
        worker_init_fn=signals.worker_init_fn,
    )
    val_shapes = PreparedShapes(val_files, model_config.num_inputs, config, evaluation=True)
    val_loader = DataLoader(
        Subset(val_shapes, range(runtime.rank, len(val_shapes), runtime.world_size)),
        batch_size=config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        worker_init_fn=signals.worker_init_fn,
    )
    batches_per_epoch = len(loader)
    total_steps = math.ceil(batches_per_epoch / config.accumulation) * config.epochs
    optimizer = make_optimizer(model, config, device)
    clock = TrainingClock(config.time_limit_s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_factor(step, config, total_steps, clock.fraction()),
    )

    start_epoch, step, best_iou, history = 0, 0, -1.0, []
    # a run stopped by a signal inside an epoch goes on from the batch after its last step
    resume_batches, resume_losses = 0, []
    last_path, best_path = run_dir / "checkpoint-last.pt", run_dir / "checkpoint-best.pt"
    if resume and last_path.is_file():
        state = load_resume_state(last_path)
        if state["model_config"] != model_config.as_dict():
            raise InputError(last_path, "was trained with another model config; use a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        best_iou, history = state["best_iou"], state["history"]
        resume_batches, resume_losses = state.get("epoch_batches", 0), state.get("epoch_losses", [])
        clock.resume(
            state.get("elapsed_s", 0.0),
            state.get("clock"),
            state.get("train_config", {}).get("time_limit_s"),
        )
        restore_rng(state["rng"], device)
        if runtime.is_main:
            within = f", batch {resume_batches} of epoch {start_epoch + 1}" * (resume_batches > 0)
            print(
                f"resuming {last_path} after epoch {start_epoch}, step {step}{within}",
                file=sys.stderr,
            )
    else:
        if resume and runtime.is_main:
            print(f"no {last_path}: starting a new run", file=sys.stderr)
        if init_from is not None:
            initial = load_checkpoint(init_from, map_location=device)
            if initial["model_config"] != model_config.as_dict():
                raise InputError(init_from, "has another model config than --config asks for")
            model.load_state_dict(initial["model"])

    trained = DistributedDataParallel(model) if runtime.distributed else model
    precision = autocast_dtype(config, device)
    writer = SummaryWriter(run_dir / "tensorboard") if runtime.is_main else None
    stop = StopCheck(clock, signals, runtime)
    clock.start()
    saved_at = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        batches_done, resume_batches = resume_batches, 0
        losses, resume_losses = resume_losses, []
        tagged.set_epoch(epoch, skip=batches_done * config.batch_size)
        skipped = batches_done
        progress = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not runtime.is_main,
            unit="batch",
            initial=skipped,
            total=batches_per_epoch,
        )
        for index, batch in enumerate(progress, start=skipped):
            started = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            updates = (index + 1) % config.accumulation == 0 or index + 1 == batches_per_epoch
            quiet = trained.no_sync() if runtime.distributed and not updates else nullcontext()  # type: ignore[operator]
            with quiet:
                with torch.autocast(
                    device.type, dtype=precision or torch.float32, enabled=precision is not None
                ):
                    loss, terms, _ = training_loss(trained, batch, config)
                (loss / config.accumulation).backward()
            losses.append(loss.item())
            if updates:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                batches_done = index + 1
                stop.check()
            shapes_per_s = (
                len(batch["inputs"]) * runtime.world_size / (time.perf_counter() - started)
            )
            # refresh=False: redraw at tqdm's own pace (mininterval, TQDM_MININTERVAL), not at
            # every step, which filled a GPU run's log with thousands of lines
            progress.set_postfix(
                loss=f"{loss.item():.4f}", shapes_per_s=f"{shapes_per_s:.1f}", refresh=False
            )
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                for name, value in terms.items():
                    writer.add_scalar(f"train/{name}", float(value), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("train/shapes_per_s", shapes_per_s, step)
            if stop.stopping:
                break
        progress.close()

        # a time limit ends the epoch where it is; a signal inside an epoch keeps the place
        stop.check()
        if stop.signal and not stop.time_up and batches_done < batches_per_epoch:
            if runtime.is_main:
                state = training_state(
                    preset, model_config, config, normalization, model, optimizer, scheduler
                )
                state.update(epoch=epoch, step=step, best_iou=best_iou, history=history)
                state.update(epoch_batches=batches_done, epoch_losses=losses)
                state.update(elapsed_s=clock.elapsed(), clock=clock.state(), rng=rng_state())
                save(last_path, state)
            break

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(losses)),
            "elapsed_s": round(clock.elapsed(), 1),
            "learning_rate": optimizer.param_groups[0]["lr"],
        }
        # a signal leaves no time to validate; a time limit validates the cut epoch
        validate = (
            config.val_every > 0
            and not stop.signal
            and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs or stop.time_up)
        )
        if validate:  # every rank takes its share of the shapes; counts are summed
            record["val"] = evaluate_model(
                model,
                val_loader,
                config,
                device,
                precision,
                reduce=_all_reduce_sum if runtime.distributed else None,
            )
        history.append(record)
        if runtime.is_main:
            improved = "val" in record and record["val"]["mean_iou"] > best_iou
            if improved:
                best_iou = record["val"]["mean_iou"]
            state = training_state(
                preset, model_config, config, normalization, model, optimizer, scheduler
            )
            state.update(epoch=epoch + 1, step=step, best_iou=best_iou, history=history)
            state.update(elapsed_s=clock.elapsed(), clock=clock.state(), rng=rng_state())
            final = epoch + 1 == config.epochs or stop.stopping
            due = time.monotonic() - saved_at >= config.checkpoint_every_s
            if validate or final or due:
                save(last_path, state)
                saved_at = time.monotonic()
                (run_dir / "history.json").write_text(json.dumps(history, indent=2))
                plot_history(history, run_dir / "training_curve.png")
            if improved:
                save(best_path, state)
            log_epoch(record, writer, wandb_run)
        if runtime.distributed:
            dist.barrier()
        if stop.stopping:
            break
    end_workers(loader, val_loader)
    if runtime.is_main and stop.time_up:
        tqdm.write(
            f"time limit of {config.time_limit_s:.0f} s reached after epoch {epoch + 1}, "
            f"step {step}: stopped (--resume with a larger --time-limit continues, its learning "
            "rate going on from here)",
            file=sys.stderr,
        )
    elif runtime.is_main and stop.signal:
        tqdm.write(
            f"{stop.signal} received: stopped after step {step} (epoch {epoch + 1}, batch "
            f"{batches_done} of {batches_per_epoch}) and saved {last_path}; --resume continues "
            f"(exit status {EXIT_INTERRUPTED})",
            file=sys.stderr,
        )
    if runtime.distributed:
        dist.barrier()  # rank 0's checkpoint is complete before any rank exits
    if writer is not None:
        writer.close()
    if wandb_run is not None:
        wandb_run.finish()
    return Outcome(history, stop.signal if stop.signal and not stop.time_up else None)


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
