"""Writing one script's section of BENCHMARKS.md, between its start and end markers."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


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
