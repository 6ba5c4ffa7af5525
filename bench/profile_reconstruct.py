"""Where one reconstruction's time goes: `reconstruct(...)` run in one process on phantom 5000
(256^3 at 1 mm) with default settings, first with the checkpoint file (the first run pays the
device's start-up, as `heartvec reconstruct` does) and then again with the model kept loaded
and a host pool (as a worker does), each under cProfile (unless --no-profile). Prints the
stage timings and writes the profiles' top functions by cumulative and by own time.

Usage: .venv/bin/python bench/profile_reconstruct.py --device cuda --out DIR [--runs 2]
       [--resolution 256] [--refine-steps N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path


def main() -> int:
    # imported here: the host pool's spawned workers import this file as their main module
    import nibabel as nib

    from heartvec.labels import load_label_table
    from heartvec.phantom import make_phantom
    from heartvec.reconstruction import defaults
    from heartvec.reconstruction.encoding import load_model
    from heartvec.reconstruction.hostwork import host_pool, wait_for_host_pool
    from heartvec.reconstruction.pipeline import (
        HOST_POOL_IMPORTS,
        ReconstructSettings,
        reconstruct,
    )
    from heartvec.reconstruction.refine import RefineSettings
    from heartvec.settings import default_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the profiles")
    parser.add_argument("--runs", type=int, default=2, help="the first loads the checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--resolution", type=int, default=defaults.RESOLUTION)
    parser.add_argument("--refine-steps", type=int, default=defaults.REFINE_STEPS)
    parser.add_argument("--top", type=int, default=45, help="functions listed per profile")
    parser.add_argument("--no-profile", action="store_true", help="timings only, no cProfile")
    parser.add_argument("--refine-step-mode", default="auto", help="eager, tensor, graph, auto")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or default_checkpoint()
    refine = RefineSettings(steps=args.refine_steps, step_mode=args.refine_step_mode)
    settings = ReconstructSettings(device=args.device, resolution=args.resolution, refine=refine)
    table = load_label_table("default")
    summary = []
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "phantom_s5000.nii.gz"
        labels, affine = make_phantom(5000, size=256, spacing=1.0)
        nib.save(nib.Nifti1Image(labels, affine), source)
        loaded = None
        for run in range(args.runs):
            profile = cProfile.Profile()
            started = time.perf_counter()
            if not args.no_profile:
                profile.enable()
            report = reconstruct(
                source, Path(scratch) / f"out_{run}", table,
                loaded if loaded is not None else checkpoint, settings,
            )  # fmt: skip
            profile.disable()
            wall = time.perf_counter() - started
            if loaded is None:  # the later runs as a worker's: model and host pool kept
                loaded = load_model(checkpoint, args.device)
                host_pool(HOST_POOL_IMPORTS)
                wait_for_host_pool()
            mode = (report["refinement"] or {}).get("step_mode")
            dice = report["summary"]["mean_dice"]
            summary.append({"run": run, "wall_s": round(wall, 3), **report["timings"],
                            "mean_dice": dice, "step_mode": mode})  # fmt: skip
            print(json.dumps(summary[-1]), flush=True)
            for key in () if args.no_profile else ("cumulative", "tottime"):
                text = io.StringIO()
                pstats.Stats(profile, stream=text).sort_stats(key).print_stats(args.top)
                (args.out / f"profile_run{run}_{key}.txt").write_text(text.getvalue())
    (args.out / "profile_summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
