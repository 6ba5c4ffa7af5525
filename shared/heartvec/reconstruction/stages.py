"""A reconstruction's or a decoding's stages: progress as each starts, and their timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

Progress = Callable[[str, float], None]
"""Called with (stage name, overall fraction done in [0, 1]) as each stage starts."""


class StageClock:
    """Times named stages (`timings`: {"<stage>_s": seconds}) and reports each start."""

    def __init__(self, stages: Sequence[str], progress: Progress | None) -> None:
        self.stages = tuple(stages)
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name, self.stages.index(name) / len(self.stages))
        started = time.perf_counter()
        yield
        self.timings[f"{name}_s"] = round(time.perf_counter() - started, 3)

    def summary(self) -> dict[str, float]:
        """The timings and their total."""
        return {**self.timings, "total_s": round(sum(self.timings.values()), 3)}
