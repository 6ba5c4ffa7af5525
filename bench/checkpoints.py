"""Checkpoints side by side, in one run: each with the defaults (over several refinement seeds)
and alone (`--refine-steps 0`), on the real subjects (the one no checkpoint trained on first: B,
or A with `--trained-on B`; the other marked as seen when `--trained-on` names it) and unseen
phantoms (256^3 at 1 mm), per class.
What decides whether a new checkpoint (or a re-export with a level offset) ships.

A variant may change the refinement's settings: `NAME=CKPT,FIELD=VALUE,...` with fields of
`RefineSettings` (e.g. `area=ckpt.pt,class_balance=0 even=ckpt.pt,class_balance=1`);
`--refined-only` skips the checkpoint alone (which refinement settings do not change) and
`--tag T` keeps the results apart (bench/results/checkpoints_T.json/.png, its own section).

Usage: .venv/bin/python bench/checkpoints.py NAME=CKPT[,FIELD=VALUE...] [...] [--seeds 0 1 2]
       [--phantoms 5000 5001] [--cases CASE ...] [--trained-on A|B] [--refined-only] [--tag T]
       [--report-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from benchmarks_md import measured, save_json, write_section
from cases import add_trained_on, subject_cases
from reconstruct import REPO
from tqdm import tqdm

from heartvec.labels import load_label_table
from heartvec.reconstruction.encoding import load_model
from heartvec.reconstruction.pipeline import ReconstructSettings, reconstruct
from heartvec.reconstruction.refine import RefineSettings

RESULTS = REPO / "bench" / "results"
MODES = ("defaults", "alone")
# the sections of BENCHMARKS.md a tag writes: heading, the text after the table
TAGGED = {
    "": ("Checkpoints side by side", ""),
    "class_balance": (
        "Refinement: fit points balanced per class",
        "`class_balance`: the share of the refinement's surface fit points split evenly among "
        "the classes, the rest by area (0: all by area, the earlier default).",
    ),
    "steps": (
        "Refinement: how many steps",
        "`steps`: Adam steps of the refinement (the fit points balanced per class); the time is "
        "each run's whole reconstruction on this CPU, mean over the seeds (`total_s`).",
    ),
    "stage6": (
        "Checkpoints side by side: stage 6",
        "Stage 6: the bundled checkpoint continued on a 2-core CPU on hearts made from real "
        'subject A and phantoms (section "The checkpoint alone against training: stage6").',
    ),
    "stage6_seeds": (
        "Checkpoints side by side: stage 6, more refinement seeds",
        "The defaults of the section above at two more refinement seeds.",
    ),
    "scale_seeds": (
        "Checkpoints side by side: the frame's scale, more refinement seeds",
        "The defaults of the section above at two more refinement seeds.",
    ),
    "points": (
        "Refinement: fit points a step",
        "`points_per_step`: the fit points each refinement step draws, a third on the surface "
        "(800 steps, the fit points balanced per class).",
    ),
    "target_points": (
        "Refinement: the fit's pool of points",
        "`target_points`: the near-surface and the volume points (and twice as many surface "
        "points) the refinement draws from the input, half fitted (each step's minibatch comes "
        "from that half) and half held out (800 steps of 1536 points, the fit points balanced "
        "per class; 8192 was the default when this ran).",
    ),
    "faster": (
        "Refinement: the faster settings",
        "The defaults (800 steps of 1536 points, `target_points` 32,768) "
        "against the two ways to spend less on a CPU: fewer points a step (`points_per_step`, "
        "`--refine-points`) or fewer steps (`steps`, `--refine-steps`).",
    ),
    "more_phantoms": (
        "Refinement: the fit pool on more unseen phantoms",
        'The fit pool (`target_points`, section "Refinement: the fit\'s pool of points") on two '
        "more phantoms no training set or earlier refinement bench used, for the thin classes.",
    ),
    "near_share": (
        "Refinement: the fit's queries near the surfaces and in the volume",
        "`near_share`: the share of each refinement step's SDF queries drawn from the "
        "near-surface points, the rest from the volume points around the heart. Until "
        "2026-12-07 the split of the pool put every near-surface point in the fitted half and "
        "every volume point in the held-out half: the fit saw no volume point (share 1) and the "
        "held-out IoU was measured on volume points alone. Now the fit has `target_points` "
        "of each kind of query and a quarter as many more of each kind are drawn and held out "
        "(800 steps of 1536 points, `target_points` 32,768, balanced per class).",
    ),
    "near_share_phantoms": (
        "Refinement: the fit's queries on more unseen phantoms",
        "`near_share` (section \"Refinement: the fit's queries near the surfaces and in the "
        'volume") on the two phantoms of "Refinement: the fit pool on more unseen phantoms", '
        "for the thin classes. Run with the first version of the fixed split, which held out a "
        "quarter of the pool (so the fit had 24,576 near-surface points, not 32,768; replaced "
        "the same evening).",
    ),
    "refine_bf16": (
        "Refinement: bf16 steps on a CPU",
        "`precision`: the refinement steps' forward passes in fp32 (the default when this ran) "
        "or under bf16 autocast (the fitted context, Adam's state and the held-out measure stay "
        "fp32), on a CPU with native bf16 instructions; 800 steps, and 1000 in bf16. Run with "
        "the first version of the fixed split (a quarter of the pool held out, the fit 24,576 "
        "near-surface points), near_share 0.75.",
    ),
    "scale": (
        "Checkpoints side by side: the frame's scale",
        "The frame a checkpoint encodes hearts in (`normalization.scale_mm`: the input's mm across "
        "the normalized cube): the bundled checkpoint as shipped (100 mm, its training data's) and "
        "re-exported with `heartvec export-checkpoint --scale-mm 90`, beside runs trained on data "
        'prepared at 90 and 100 mm (section "The checkpoint alone against training: scale90").',
    ),
}


def saved_path(tag: str) -> Path:
    return RESULTS / (f"checkpoints_{tag}.json" if tag else "checkpoints.json")


def parse_variant(spec: str) -> tuple[str, Path, dict[str, Any]]:
    """'NAME=CKPT[,FIELD=VALUE...]' -> (name, checkpoint, RefineSettings fields)."""
    name, _, rest = spec.partition("=")
    path, *pairs = rest.split(",")
    if not name or not path:
        raise ValueError(f"{spec!r}: give NAME=CKPT[,FIELD=VALUE...]")
    fields = {f.name: f.type for f in dataclasses.fields(RefineSettings)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise ValueError(f"{spec!r}: {key!r} is no refinement setting ({sorted(fields)})")
        kind = {"int": int, "float": float}.get(str(fields[key]), str)
        changes[key] = kind(value)
    RefineSettings(**changes)  # refused here, not after an hour of runs
    return name, Path(path), changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkpoints", nargs="*", help="NAME=PATH[,FIELD=VALUE...], in the order shown"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phantoms", type=int, nargs="*", default=[5000, 5001])
    parser.add_argument(
        "--cases", nargs="+", help="only these cases ('real B', 'real A', 'phantom 5000', ...)"
    )
    add_trained_on(parser)
    parser.add_argument("--refined-only", action="store_true", help="skip the checkpoint alone")
    parser.add_argument("--tag", default="", choices=sorted(TAGGED))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    saved = saved_path(args.tag)
    if args.report_only:
        write_report(json.loads(saved.read_text()), args.tag)
        return 0
    try:
        named = [parse_variant(spec) for spec in args.checkpoints]
    except ValueError as error:
        parser.error(str(error))
    if not named:
        parser.error("give the checkpoints as NAME=PATH")
    modes = MODES[:1] if args.refined_only else MODES
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = subject_cases(folder, args.phantoms, args.trained_on)
        if args.cases:
            unknown = set(args.cases) - set(cases)
            if unknown:
                parser.error(f"unknown cases {sorted(unknown)}: expected some of {list(cases)}")
            cases = {name: spec for name, spec in cases.items() if name in args.cases}
        jobs = [
            (name, path, changes, case, mode, seed)
            for name, path, changes in named
            for case in cases
            for mode in modes
            for seed in (args.seeds if mode == "defaults" else [0])
        ]
        loaded: dict[Path, Any] = {}
        for name, path, changes, case, mode, seed in tqdm(jobs, desc="reconstructions"):
            if path not in loaded:
                loaded = {path: load_model(path)}  # one model in memory at a time
            refine = RefineSettings(**changes) if mode == "defaults" else RefineSettings(steps=0)
            settings = ReconstructSettings(seed=seed, refine=refine)
            source, table = cases[case]
            report = reconstruct(source, folder / "out", load_label_table(table), loaded[path],
                                 settings)  # fmt: skip
            runs.append({
                "checkpoint": name, "sha256": loaded[path].sha256, "refine": changes,
                "case": case, "mode": mode,
                "seed": seed, "mean_dice": report["summary"]["mean_dice"],
                "mean_hd95_mm": report["summary"]["mean_hd95_mm"],
                "dice": {c: m["dice"] for c, m in report["classes"].items()},
                "total_s": report["timings"]["total_s"],
            })  # fmt: skip
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "dice"}), flush=True)
    summary = {
        **measured(),
        "trained_on": args.trained_on,
        "default_steps": RefineSettings().steps,
        "seeds": args.seeds,
        "runs": runs,
    }
    save_json(saved, summary)
    write_report(summary, args.tag)
    return 0


def grouped(summary: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(checkpoint, case, mode) -> the mean over its seeds of Dice, HD95 and per-class Dice, with
    the mean Dice's range."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in summary["runs"]:
        groups.setdefault((run["checkpoint"], run["case"], run["mode"]), []).append(run)
    result = {}
    for key, runs in groups.items():
        dice = [r["mean_dice"] for r in runs]
        result[key] = {
            "sha256": runs[0]["sha256"],
            "mean_dice": float(np.mean(dice)),
            "range": (min(dice), max(dice)),
            "mean_hd95_mm": float(np.mean([r["mean_hd95_mm"] for r in runs])),
            "dice": {c: float(np.mean([r["dice"][c] for r in runs])) for c in runs[0]["dice"]},
            "seeds": len(runs),
            "total_s": float(np.mean([r["total_s"] for r in runs])),
        }
    return result


def write_report(summary: dict[str, Any], tag: str = "") -> None:
    table = grouped(summary)
    modes = [mode for mode in MODES if any(key[2] == mode for key in table)]
    heading, after = TAGGED[tag]
    changed = {run["checkpoint"]: run.get("refine", {}) for run in summary["runs"]}
    names = list(dict.fromkeys(k[0] for k in table))
    cases = list(dict.fromkeys(k[1] for k in table))
    seen = summary.get("trained_on", "A" if summary.get("trained_on_a") else None)
    held_out = "A" if seen == "B" else "B"
    subjects = (
        f"Real {held_out} was never trained on; some of the checkpoints trained on hearts made "
        f"from real {seen}"
        if seen
        else "Neither real subject was trained on"
    )
    lines = [
        f"Measured {summary['date']} on {summary['machine']} by `bench/checkpoints.py"
        f"{' --tag ' + tag if tag else ''}`: each variant (a checkpoint, with the refinement "
        f"settings it names changed) with the defaults (resolution 256, "
        f"{summary.get('default_steps', 400)} refinement steps unless the variant changes them; "
        f"the mean over refinement seeds {summary['seeds']} [their range])"
        + (" and alone (`--refine-steps 0`, resolution 256)" if "alone" in modes else "")
        + f". {subjects}. Phantoms: 256^3 at 1 mm, seeds no "
        "training set holds. Time: a reconstruction's, mean over the cases and seeds. Cells: mean "
        "Dice [range] / mean HD95.",
        *([after] if after else []),
        "",
        "| variant | sha256 | refinement changed | mode | time | " + " | ".join(cases) + " |",
        "|---|---|---|---|---|" + "---|" * len(cases),
    ]
    for name in names:
        for mode in modes:
            cells = []
            for case in cases:
                row = table.get((name, case, mode))
                if row is None:
                    cells.append("-")
                    continue
                low, high = row["range"]
                spread = f" [{low:.3f}-{high:.3f}]" if row["seeds"] > 1 else ""
                cells.append(f"{row['mean_dice']:.3f}{spread} / {row['mean_hd95_mm']:.2f} mm")
            sha = table[(name, cases[0], mode)]["sha256"][:12]
            change = ", ".join(f"{k}={v}" for k, v in changed[name].items()) or "-"
            if mode == "alone":
                change = "-"
            seconds = np.mean([table[(name, case, mode)]["total_s"] for case in cases])
            lines.append(
                f"| {name} | `{sha}` | {change} | {mode} | {seconds:.1f} s | "
                + " | ".join(cells)
                + " |"
            )
    classes = list(dict.fromkeys(c for row in table.values() for c in row["dice"]))
    for mode in modes:
        lines += ["", f"Per class, {mode} (mean Dice):", "",
                  "| variant | case | " + " | ".join(classes) + " |",
                  "|---|---|" + "---|" * len(classes)]  # fmt: skip
        for name in names:
            for case in cases:
                dice = table[(name, case, mode)]["dice"]
                cells = [f"{dice[c]:.2f}" if c in dice else "-" for c in classes]
                lines.append(f"| {name} | {case} | " + " | ".join(cells) + " |")
    picture = saved_path(tag).with_suffix(".png")
    lines += ["", f"![checkpoints]({picture.relative_to(REPO)})"]
    key = "bench/checkpoints.py" + (f" --tag {tag}" if tag else "")
    write_section(key, heading, lines)
    figure, axes = plt.subplots(
        1, len(modes), figsize=(6 * len(modes), 4), constrained_layout=True, squeeze=False
    )
    width = 0.8 / len(names)
    for axis, mode in zip(axes[0], modes, strict=True):
        for index, name in enumerate(names):
            values = [table[(name, case, mode)]["mean_dice"] for case in cases]
            axis.bar(np.arange(len(cases)) + index * width, values, width, label=name)
        axis.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2, cases)
        low = 0.85 if mode == "defaults" else 0.4
        axis.set(ylim=(low, 1.0), ylabel="mean Dice", title=f"{mode}")
        axis.legend(fontsize="small")
    figure.suptitle(f"{heading.lower()} (real {held_out} never trained on)")
    figure.savefig(picture, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
