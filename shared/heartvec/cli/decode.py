"""`heartvec decode CODE.npz --out DIR`: a stored shape code -> the meshes, GLB and label volume
of the reconstruction it came from."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from heartvec.reconstruction.decode import STAGES, DecodeSettings, decode
from heartvec.reconstruction.decoding import PRECISIONS
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.settings import default_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec decode",
        description="Draw a shape code (a reconstruction's shape_code.npz) with the decoder of "
        "the checkpoint that made it: DIR/meshes/<index>_<name>.ply, DIR/heart.glb, "
        "DIR/reconstruction.nii.gz (on the input's grid, in its label values), DIR/report.json. "
        "A code made by another checkpoint is refused (exit 2).",
    )
    parser.add_argument("code", type=Path, help="a shape_code.npz")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    low, high = ReconstructOptions.bounds("resolution")
    parser.add_argument(
        "--resolution",
        type=int,
        help=f"grid points along each side, {low}..{high} (default: the reconstruction's)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="model checkpoint (default: $HEARTVEC_CHECKPOINT or the bundled one)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="as for heartvec reconstruct"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DecodeSettings(
        resolution=args.resolution, device=args.device, precision=args.precision
    )
    progress = tqdm(total=len(STAGES), desc="decode", unit="stage")

    def advance(stage: str, fraction: float) -> None:
        progress.set_postfix(stage=stage)
        progress.n = round(fraction * len(STAGES))
        progress.refresh()

    report = decode(args.code, args.out, args.checkpoint or default_checkpoint(), settings, advance)
    progress.close()
    print(json.dumps({"out": str(args.out), "total_s": report["timings"]["total_s"]}))
    return 0
