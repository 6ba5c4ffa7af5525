"""The few typed exceptions heartvec raises.

Library code raises them where a problem is found; the command line turns them into an exit
status in one place (`heartvec.cli`), the API into an HTTP status.
"""

from __future__ import annotations

from pathlib import Path


class HeartvecError(Exception):
    """Base class of every error heartvec raises on purpose."""


class InputError(HeartvecError):
    """A user-supplied file or value is invalid (exit status 2, HTTP 4xx).

    Args:
        source: the file (or option) the problem was found in.
        problem: what is wrong, naming the value received and the value expected.
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class StorageError(HeartvecError):
    """Not enough free space (or a failed write) for an output; nothing half-written is left."""


class LabelTableError(InputError):
    """A label table is unknown or malformed."""
