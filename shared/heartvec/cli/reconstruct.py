"""`heartvec reconstruct FILE --out DIR`: one label volume -> labelled meshes, label volume,
latent set and report."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.reconstruction.decoding import PRECISIONS
from heartvec.reconstruction.options import ReconstructOptions
from heartvec.reconstruction.pipeline import STAGES, ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings
from heartvec.settings import default_checkpoint

OPTIONS = ReconstructOptions.model_fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec reconstruct",
        description="Encode a label volume with the autoencoder and decode it back: "
        "DIR/meshes/<index>_<name>.ply, DIR/heart.glb, DIR/reconstruction.nii.gz (on the input's "
        "grid, in its label values), DIR/latent.npy, DIR/shape_code.npz (what `heartvec decode` "
        "draws the same shape from), DIR/report.json, DIR/preview.png.",
    )
    parser.add_argument("file", type=Path, help="a .nii or .nii.gz label volume")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--labels", default="default", help="label table (default: default)")
    parser.add_argument("--ignore-unknown-labels", action="store_true")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="model checkpoint (default: $HEARTVEC_CHECKPOINT or the bundled one)",
    )
    _option(parser, "resolution", "grid points along the heart's longest side")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto (default): decoding in bf16 on GPUs and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), else fp32; refinement in fp32 unless bf16 is asked for",
    )
    _option(parser, "refine_steps", "latent refinement steps fitting the input itself",
            "0: the encoder's latents as they are")  # fmt: skip
    _option(parser, "refine_points", "fit points each refinement step draws",
            "fewer: faster on a CPU, a coarser fit of the thin vessels")  # fmt: skip
    _option(parser, "frame_search",
            "frames a search over the frame's centre and scale scores against the input",
            "0: the frame centred on the input's box")  # fmt: skip
    parser.add_argument(
        "--min-piece",
        type=float,
        default=ReconstructSettings().min_piece,
        help="drop the pieces of a class smaller than this fraction of its largest piece "
        "(stray pieces far from the heart; default %(default)s; 0: keep all)",
    )
    return parser


def _option(parser: argparse.ArgumentParser, name: str, what: str, note: str = "") -> None:
    """`--NAME` for the integer job option `name`, its range and default the options' own."""
    low, high = ReconstructOptions.bounds(name)
    parser.add_argument(
        "--" + name.replace("_", "-"),
        type=int,
        default=OPTIONS[name].default,
        help=f"{what}, {low}..{high} (default %(default)s{'; ' + note if note else ''})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = ReconstructSettings(  # checks the options' ranges (InputError: exit 2)
        resolution=args.resolution,
        refine=RefineSettings(
            steps=args.refine_steps,
            points_per_step=args.refine_points,
            precision="bf16" if args.precision == "bf16" else "fp32",
        ),
        frame_search=args.frame_search,
        device=args.device,
        precision=args.precision,
        min_piece=args.min_piece,
    )
    progress = tqdm(total=len(STAGES), desc="reconstruct", unit="stage")

    def advance(stage: str, fraction: float) -> None:
        progress.set_postfix(stage=stage)
        progress.n = round(fraction * len(STAGES))
        progress.refresh()

    report = reconstruct(
        args.file,
        args.out,
        load_label_table(args.labels),
        args.checkpoint or default_checkpoint(),
        settings,
        args.ignore_unknown_labels,
        advance,
    )
    progress.close()
    summary = {"out": str(args.out), **report["summary"], "total_s": report["timings"]["total_s"]}
    if report["frame_search"] is not None:  # the frame the search chose
        summary["frame_shift_mm"] = report["frame_search"]["shift_mm"]
        summary["frame_scale_factor"] = report["frame_search"]["scale_factor"]
    print(json.dumps(summary))
    return 0
