"""Training throughput and peak memory per preset and batch size; updates BENCHMARKS.md.

Each configuration runs in a fresh process (so peak memory is its own): a few warm-up steps,
then timed steps of forward + backward + AdamW on synthetic batches of the training shapes
(data loading excluded). The eikonal term is on. For comparison, the same step with the
eikonal gradient taken by autograd (double backward, one per class channel) instead of the
finite differences heartvec uses (`autograd`), `base` without activation checkpointing
(`fd-no-ckpt`), and the step with the unfused AdamW used before (`fd-unfused-adamw`: an update
of a dozen small operations per parameter tensor).

`--data` measures making training items instead (`PreparedShapes`, what a DataLoader worker
does per shape): from files kept in memory with their index sets (`cache_mb`, the default)
against reading each file again (`cache_mb: 0`, as before), on phantoms prepared here.

Usage: .venv/bin/python bench/train.py [--quick] [--data]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from benchmarks_md import cpu_description, save_json, utc_now, write_section
from torch.nn.attention import SDPBackend, sdpa_kernel

from heartvec.model.config import MODEL_PRESETS
from heartvec.model.vecset import VecSetAutoencoder
from heartvec_trainer.config import TRAIN_PRESETS, TrainConfig
from heartvec_trainer.losses import sdf_target, training_loss
from heartvec_trainer.train import make_optimizer

REPO = Path(__file__).resolve().parents[1]
CPU_RUNS = [("tiny", 1, "fd"), ("tiny", 4, "fd"), ("tiny", 4, "fd-unfused-adamw"),
            ("tiny", 4, "autograd"), ("small", 1, "fd"), ("small", 2, "fd"),
            ("small", 2, "fd-unfused-adamw"), ("small", 2, "autograd"), ("base", 1, "fd"),
            ("base", 1, "fd-no-ckpt")]  # fmt: skip
GPU_RUNS = [("small", 16, "fd"), ("small", 64, "fd"), ("base", 16, "fd"), ("base", 32, "fd"),
            ("base", 64, "fd"), ("base", 64, "fd-unfused-adamw"), ("base", 8, "fd-no-ckpt"),
            ("base", 2, "autograd")]  # fmt: skip


def synthetic_batch(preset: str, batch: int, config: TrainConfig, device: torch.device) -> dict:
    inputs = MODEL_PRESETS[preset].num_inputs
    classes = MODEL_PRESETS[preset].num_classes
    generator = torch.Generator().manual_seed(0)

    def points(n: int) -> torch.Tensor:
        return torch.rand(batch, n, 3, generator=generator) * 2 - 1

    tensors = {
        "inputs": points(inputs),
        "input_labels": torch.randint(1, classes + 1, (batch, inputs), generator=generator),
        "vol_points": points(config.vol_points),
        "vol_sdf": torch.randn(batch, config.vol_points, classes, generator=generator) * 0.1,
        "near_points": points(config.near_points),
        "near_sdf": torch.randn(batch, config.near_points, classes, generator=generator) * 0.05,
        "surface_points": points(config.surface_points),
        "surface_labels": torch.randint(1, classes + 1, (batch, config.surface_points)),
        "class_present": torch.ones(batch, classes, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in tensors.items()}


def autograd_eikonal_loss(model: torch.nn.Module, batch: dict, config: TrainConfig) -> torch.Tensor:
    """The alternative heartvec does not use: eikonal by autograd, a double backward.

    The fused attention kernels have no double backward ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"), so this
    runs attention on the unfused math kernel, as hand-written attention would."""
    loss, _, _ = training_loss(model, batch, replace(config, weight_eikonal=0.0))
    centres = batch["near_points"][:, : config.eikonal_points].clone().requires_grad_(True)
    predicted = model(batch["inputs"], batch["input_labels"], centres).float()
    target = sdf_target(batch["near_sdf"][:, : config.eikonal_points], config.truncation)
    penalty = predicted.new_zeros(())
    for channel in range(predicted.shape[-1]):
        (gradient,) = torch.autograd.grad(predicted[..., channel].sum(), centres, create_graph=True)
        inside_band = target[..., channel].abs() < 1
        norm = gradient.norm(dim=-1) * (config.truncation or 1.0)
        penalty = penalty + ((norm - 1) ** 2 * inside_band).mean()
    return loss + config.weight_eikonal * penalty


def measure_one(
    preset: str, batch_size: int, mode: str, steps: int, checkpointing: bool | None = None
) -> dict[str, Any]:
    """One configuration's step time and peak memory; `checkpointing` overrides the preset's
    activation checkpointing (`base` has it; `fd-no-ckpt` turns it off)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model_config = MODEL_PRESETS[preset]
    if mode == "fd-no-ckpt":  # the same step without activation checkpointing
        model_config = replace(model_config, activation_checkpointing=False)
    if checkpointing is not None:
        model_config = replace(model_config, activation_checkpointing=checkpointing)
    model = VecSetAutoencoder(model_config).to(device)
    config = replace(TRAIN_PRESETS[preset], learning_rate=1e-4)
    optimizer = make_optimizer(model, config, device, fused=mode != "fd-unfused-adamw")
    batch = synthetic_batch(preset, batch_size, config, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        # autograd's double backward needs attention on the math kernel, in the backward pass
        # too: activation checkpointing recomputes each block there, and a recompute on another
        # kernel saves other tensors than the forward did (torch refuses the mismatch)
        kernel = nullcontext() if mode.startswith("fd") else sdpa_kernel(SDPBackend.MATH)
        with kernel:
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                if mode.startswith("fd"):
                    loss, _, _ = training_loss(model, batch, config)
                else:
                    loss = autograd_eikonal_loss(model, batch, config)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _process_peak_mb()
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.machine()
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    return {
        "preset": preset, "batch": batch_size, "eikonal": mode, "device": str(device),
        "device_name": name, "seconds_per_step": seconds, "shapes_per_s": batch_size / seconds,
        "peak_memory_mb": round(peak_mb), "parameters_m": parameters,
    }  # fmt: skip


def _process_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--one", nargs=3, metavar=("PRESET", "BATCH", "MODE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        default=None,
        help="with --one: recompute blocks in the backward pass whatever the preset says",
    )
    parser.add_argument("--quick", action="store_true", help="tiny and small only")
    parser.add_argument("--data", action="store_true", help="measure making training items")
    args = parser.parse_args()
    if args.data:
        return measure_data()
    if args.one:
        preset, batch, mode = args.one
        one = measure_one(preset, int(batch), mode, args.steps, args.activation_checkpointing)
        print(json.dumps(one))
        return 0
    runs = GPU_RUNS if torch.cuda.is_available() else CPU_RUNS
    if args.quick:
        runs = [r for r in runs if r[0] != "base"]
    results = []
    for preset, batch, mode in runs:
        command = [
            sys.executable,
            __file__,
            "--one",
            preset,
            str(batch),
            mode,
            "--steps",
            str(args.steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
            results.append({"preset": preset, "batch": batch, "eikonal": mode, "error": tail})
        else:
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    summary = {
        "date": utc_now(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "runs": results,
    }
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "train_gpu" if torch.cuda.is_available() else "train_cpu"
    save_json(out / f"{name}.json", summary)
    plot(results, out / f"{name}.png")
    update_benchmarks(summary, name)
    return 0


def plot(results: list[dict[str, Any]], path: Path) -> None:
    done = [r for r in results if "error" not in r]
    labels = [f"{r['preset']} b{r['batch']} {r['eikonal']}" for r in done]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4), constrained_layout=True)
    colours = ["C0" if r["eikonal"] == "fd" else "C3" for r in done]
    speed.barh(labels, [r["shapes_per_s"] for r in done], color=colours)
    speed.set(xscale="log", xlabel="shapes / s (log)", title="training throughput")
    memory.barh(labels, [r["peak_memory_mb"] for r in done], color=colours)
    memory.set(xlabel="MB", title="peak memory (blue: finite-difference eikonal, red: autograd)")
    figure.savefig(path, dpi=90)
    plt.close(figure)


def update_benchmarks(summary: dict[str, Any], name: str) -> None:
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/train.py`.",
        "",
        "| preset | batch | variant | shapes/s | s/step | peak memory | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        if "error" in r:
            lines.append(
                f"| {r['preset']} | {r['batch']} | {r['eikonal']} | failed: {r['error']} | | | |"
            )
            continue
        lines.append(
            f"| {r['preset']} | {r['batch']} | {r['eikonal']} | {r['shapes_per_s']:.2f} | "
            f"{r['seconds_per_step']:.3f} | {r['peak_memory_mb']:,} MB | "
            f"{r['parameters_m']:.1f} M |"
        )
    lines += ["", f"![training benchmark](bench/results/{name}.png)"]
    heading = "Training throughput (GPU)" if name.endswith("gpu") else "Training throughput (CPU)"
    write_section(f"bench/train.py:{name}", heading, lines)


DATA_CASES = [  # (phantom size, spacing mm, prepared points of each kind)
    (128, 2.0, 40_000),  # the bundled checkpoint's training data
    (256, 1.0, 100_000),  # `heartvec prepare`'s defaults on a 256^3 volume
]


def measure_data(items: int = 64) -> int:
    """Items per second of `PreparedShapes` for tiny's and small's point counts, from files
    kept in memory against files read each time; updates BENCHMARKS.md."""
    import tempfile

    from heartvec.cli import main as heartvec
    from heartvec_trainer.data import PreparedShapes

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size, spacing, points in DATA_CASES:
            root = Path(folder) / f"{size}"
            counts = [str(points)] * 3
            assert heartvec(["phantom", str(root / "volumes"), "--count", "4", "--seed", "7000",
                             "--size", str(size), "--spacing", str(spacing)]) == 0  # fmt: skip
            assert heartvec(["prepare", str(root / "volumes"), "--out", str(root / "data"),
                             "--surface-points", counts[0], "--vol-points", counts[1],
                             "--near-points", counts[2]]) == 0  # fmt: skip
            files = sorted((root / "data").glob("*.npz"))
            megabytes = sum(f.stat().st_size for f in files) / len(files) / 2**20
            for preset in ("tiny", "small"):
                row: dict[str, Any] = {
                    "phantom": f"{size}^3, {points:,} points of each kind",
                    "file_mb": round(megabytes, 1),
                    "preset": preset,
                }
                for name, cache_mb in (("read", 0.0), ("kept", 4096.0)):
                    config = replace(TRAIN_PRESETS[preset], cache_mb=cache_mb)
                    dataset = PreparedShapes(files, MODEL_PRESETS[preset].num_inputs, config)
                    for key in range(len(files)):  # first reads (kept from here on)
                        dataset[key]
                    started = time.perf_counter()
                    for key in range(items):
                        dataset[len(files) + key]  # later epochs' draws
                    row[f"{name}_ms"] = (time.perf_counter() - started) / items * 1000
                rows.append(row)
                print(row, flush=True)
    date = utc_now()
    cpu = cpu_description()
    out = REPO / "bench" / "results"
    save_json(out / "train_data.json", {"date": date, "cpu": cpu, "rows": rows})
    lines = [
        f"Measured {date} on {cpu} by `bench/train.py --data` (one process, {items} items each"
        ", after each file's first read).",
        "",
        "| prepared phantom | file | preset | read each time | kept in memory | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phantom']} | {r['file_mb']} MB | {r['preset']} | {r['read_ms']:.1f} ms | "
            f"{r['kept_ms']:.1f} ms | {r['read_ms'] / r['kept_ms']:.1f}x |"
        )
    lines += ["", "![training items](bench/results/train_data.png)"]
    write_section("bench/train.py:train_data", "Training items (CPU)", lines)
    plot_data(rows, out / "train_data.png")
    return 0


def plot_data(rows: list[dict[str, Any]], path: Path) -> None:
    """Milliseconds per item, read each time against kept in memory, per case and preset."""
    labels = [f"{r['phantom'].split(',')[0]} {r['preset']}" for r in rows]
    figure, axis = plt.subplots(figsize=(7, 3), constrained_layout=True)
    y = range(len(rows))
    axis.barh([i + 0.2 for i in y], [r["read_ms"] for r in rows], 0.4, label="read each time")
    axis.barh([i - 0.2 for i in y], [r["kept_ms"] for r in rows], 0.4, label="kept in memory")
    axis.set(yticks=list(y), yticklabels=labels, xlabel="ms per training item")
    axis.legend()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
