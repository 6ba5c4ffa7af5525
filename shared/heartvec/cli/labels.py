"""`heartvec labels`: print the label table in use (label value -> class)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from heartvec.labels import load_label_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heartvec labels",
        description="Print a label table: which label value means which heart class.",
    )
    parser.add_argument(
        "--labels", default="default", help="default, mmwhs, mmwhs-raw or a JSON/YAML file"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table = load_label_table(args.labels)
    if args.json:
        print(json.dumps(table.as_dict(), indent=2))
        return 0
    print(f"label table: {table.name}")
    print(f"{'value':>6}  {'class':>5}  name")
    for value, class_index in sorted(table.class_of_value.items()):
        print(f"{value:>6}  {class_index:>5}  {table.class_name(class_index)}")
    return 0
