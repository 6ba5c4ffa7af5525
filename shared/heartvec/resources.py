"""What a process used: its peak resident memory."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_memory_mb() -> int:
    """Peak resident memory of this process in MB.

    /proc's VmHWM starts afresh at exec; ru_maxrss does not (a child of a large parent would
    report the parent's peak), so it is only the fallback off Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
