"""`heartvec prepare INPUTS... --out DIR`: label volumes -> training `.npz` files.

Resumable (finished outputs are skipped; every file is written to a temporary name and renamed,
so a killed run leaves no half file), parallel (`--workers`), shardable for SLURM array jobs
(`--shard I/N`), and honest about failures: one line per failed file, the rest go on, and the
exit status is non-zero if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from heartvec.errors import HeartvecError, InputError, StorageError
from heartvec.labels import load_label_table
from heartvec.resources import peak_memory_mb
from heartvec.samples import SampleSettings, prepare_sample
from heartvec.volume import MAX_VOXELS, load_label_volume
from heartvec_trainer.folders import output_folder
from heartvec_trainer.quality import plot_sample, sample_quality, summarize, write_json_atomic

NPZ_KEYS = (
    "surface_points",
    "surface_labels",
    "surface_normals",
    "vol_points",
    "vol_sdf",
    "near_points",
    "near_sdf",
    "class_present",
    "center",
    "scale",
    "affine",
    "shape",
    "spacing",
)
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PrepareJob:
    """Everything a worker needs to prepare one volume (picklable)."""

    source: Path
    output: Path
    record: Path
    labels: str
    ignore_unknown_labels: bool
    settings: SampleSettings
    seed: int
    max_voxels: int
    plot: Path | None


def volume_stem(path: Path) -> str:
    """The file name without its NIfTI suffix: `case_01.nii.gz` -> `case_01`."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def discover_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, folders searched recursively for `.nii`/`.nii.gz`; sorted, unique."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += [p for p in item.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)]
        else:
            found.append(item)  # missing or odd files fail later, one line each
    return sorted(set(found))


def select_shard(files: list[Path], shard: str | None) -> list[Path]:
    """Files of shard `I/N` (I = 0..N-1, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)."""
    if shard is None:
        return files
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError as e:
        raise InputError("--shard", f"expected I/N such as 0/4, got {shard!r}") from e
    if count < 1 or not 0 <= index < count:
        raise InputError("--shard", f"expected 0 <= I < N, got {shard!r}")
    return files[index::count]


def is_complete_npz(path: Path) -> bool:
    """True when `path` is a readable `.npz` holding every key of the training format."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{key}.npy" in names for key in NPZ_KEYS)


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an `.npz` under a temporary name and rename it, after checking free space."""
    needed = sum(a.nbytes for a in arrays.values()) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < 2 * needed:
        raise StorageError(f"{path.parent}: {free:,} bytes free, need about {2 * needed:,}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def prepare_one(job: PrepareJob) -> dict[str, Any]:
    """Prepare one volume; never raises for a bad input, returns its quality record."""
    started = time.perf_counter()
    record: dict[str, Any] = {"file": str(job.source), "output": job.output.name}
    try:
        table = load_label_table(job.labels)
        volume = load_label_volume(job.source, table, job.ignore_unknown_labels, job.max_voxels)
        load_s = time.perf_counter() - started
        rng = np.random.default_rng([job.seed, zlib.crc32(volume_stem(job.source).encode())])
        sample = prepare_sample(volume, job.settings, rng)
        record["quality"] = sample_quality(volume, sample)
        write_started = time.perf_counter()
        save_npz_atomic(job.output, sample.arrays)
        if job.plot is not None:
            try:
                plot_sample(volume, sample, job.plot)
            except Exception as e:  # the picture is a convenience: never lose the sample for it
                record["plot_error"] = repr(e)
        record["timings"] = {
            "load_s": round(load_s, 3),
            **{k: round(v, 3) for k, v in sample.timings.items()},
            "write_s": round(time.perf_counter() - write_started, 3),
            "total_s": round(time.perf_counter() - started, 3),
        }
        record["status"] = "ok"
    except HeartvecError as e:
        record.update(status="failed", error=str(e), input_error=isinstance(e, InputError))
    except Exception as e:  # a bug or a library failure on odd data: keep the batch going
        record.update(
            status="failed",
            error=f"{job.source}: internal error: {e!r}",
            input_error=False,
            traceback=traceback.format_exc(),
        )
    record["worker_peak_rss_mb"] = peak_memory_mb()
    write_json_atomic(job.record, record)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec prepare",
        description="Turn NIfTI label volumes (files or folders of them) into training .npz "
        "files with exact per-class signed distances, plus DIR/quality.json and "
        "DIR/quality.png. Finished outputs are skipped, so a stopped run resumes.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help=".nii/.nii.gz files or folders")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--labels", default="default", help="label table (default: default)")
    parser.add_argument("--ignore-unknown-labels", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--surface-points", type=int, default=100_000)
    parser.add_argument("--vol-points", type=int, default=100_000)
    parser.add_argument("--near-points", type=int, default=100_000)
    parser.add_argument(
        "--near-sigmas",
        type=float,
        nargs=2,
        default=(0.005, 0.05),
        metavar=("SMALL", "LARGE"),
        help="Gaussian offsets of near points, normalized units (default 0.005 0.05)",
    )
    parser.add_argument(
        "--normalize",
        choices=("fixed", "fit"),
        default="fixed",
        help="fixed: one physical scale for all volumes (keeps size); fit: each fills the cube",
    )
    parser.add_argument("--scale-mm", type=float, default=SampleSettings.scale_mm)
    parser.add_argument("--shard", help="I/N: prepare only every N-th file from the I-th (0-based)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished outputs too")
    parser.add_argument("--max-voxels", type=int, default=MAX_VOXELS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1 or min(args.surface_points, args.vol_points, args.near_points) < 1:
        parser.error("--workers and the point counts must be at least 1")
    files = select_shard(discover_inputs(args.inputs), args.shard)
    if not files:
        raise InputError(" ".join(map(str, args.inputs)), "no .nii or .nii.gz files found")
    stems = [volume_stem(f) for f in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError("inputs", f"several inputs share the names {duplicates}; rename them")
    load_label_table(args.labels)  # fail once, before any work, on a bad table
    settings = SampleSettings(
        surface_points=args.surface_points,
        vol_points=args.vol_points,
        near_points=args.near_points,
        near_sigmas=tuple(args.near_sigmas),
        normalize=args.normalize,
        scale_mm=args.scale_mm,
    )
    records_dir = output_folder(output_folder(args.out) / "quality")
    jobs: list[PrepareJob] = []
    skipped = 0
    for source, stem in zip(files, stems, strict=True):
        output = args.out / f"{stem}.npz"
        if not args.overwrite and is_complete_npz(output):
            skipped += 1
            continue
        wants_plot = not jobs and not (args.out / "quality.png").exists()
        jobs.append(
            PrepareJob(
                source=source,
                output=output,
                record=records_dir / f"{stem}.json",
                labels=args.labels,
                ignore_unknown_labels=args.ignore_unknown_labels,
                settings=settings,
                seed=args.seed,
                max_voxels=args.max_voxels,
                plot=args.out / "quality.png" if wants_plot else None,
            )
        )
    if skipped:
        print(f"skipping {skipped} finished file(s) in {args.out}", file=sys.stderr)
    failed = _run_jobs(jobs, args.workers)
    _write_quality(args.out, records_dir)
    print(
        f"prepared {len(jobs) - len(failed)}, skipped {skipped}, failed {len(failed)}; "
        f"outputs in {args.out}, report in {args.out / 'quality.json'}"
    )
    if not failed:
        return 0
    return 2 if all(r["input_error"] for r in failed) else 1


def _run_jobs(jobs: list[PrepareJob], workers: int) -> list[dict[str, Any]]:
    """Run the jobs with a progress bar; returns the records of those that failed."""
    failed: list[dict[str, Any]] = []
    progress = tqdm(total=len(jobs), desc="prepare", unit="volume", disable=not jobs)

    def finished(record: dict[str, Any]) -> None:
        if record["status"] != "ok":
            failed.append(record)
            tqdm.write(f"heartvec: error: {record['error']}", file=sys.stderr)
        progress.set_postfix(failed=len(failed), refresh=False)
        progress.update()

    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            finished(prepare_one(job))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(prepare_one, job) for job in jobs]):
                finished(future.result())
    progress.close()
    return failed


def _write_quality(out_dir: Path, records_dir: Path) -> None:
    """Merge every per-file record (this run's and earlier runs') into DIR/quality.json."""
    records = []
    for path in sorted(records_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if record["status"] == "ok" and not (out_dir / record["output"]).exists():
            continue  # its output was deleted by hand: the record no longer describes a file
        records.append(record)
    write_json_atomic(out_dir / "quality.json", {"summary": summarize(records), "files": records})
