"""What a benchmark writes: its results (stamped with when and on what they were measured) under
bench/results, and its section of BENCHMARKS.md between its start and end markers."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from heartvec.reconstruction.decoding import cpu_has_native_bf16

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def utc_now() -> str:
    """The date a result is stamped with: minutes, UTC."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cpu_description() -> str:
    """The CPU model, its cores and whether it has native bf16: the latency depends on it (AMX /
    AVX512-BF16 machines decode in bf16 under `--precision auto`, others in fp32)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return (
        f"{model} ({platform.machine()}, {os.cpu_count()} cores, {bf16}), "
        f"{torch.get_num_threads()} torch threads"
    )


def machine(device: str = "cpu") -> str:
    """What ran it: the CPU's description, or the GPU's name for a CUDA device."""
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_description()


def measured(device: str = "cpu") -> dict[str, Any]:
    """The stamp saved results begin with: when (`utc_now`) and on what (`machine`)."""
    return {"date": utc_now(), "machine": machine(device)}


def save_json(path: Path, results: Any) -> None:
    """Write results as indented JSON, making their folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))


def write_section(key: str, heading: str, lines: list[str]) -> None:
    """Replace the lines between `<!-- KEY:start -->` and `<!-- KEY:end -->` in BENCHMARKS.md,
    or append them under `## heading` when the markers are not there yet."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    section = "\n".join([start, *lines, end])
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
