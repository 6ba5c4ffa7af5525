"""What a process may use: the CPUs it can run on (affinity and a container's CPU quota), and
its peak resident memory."""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP) -> int:
    """CPUs this process can keep busy: those its affinity allows, capped by the CPU quota of
    its cgroup (a container started with `--cpus 4`, a SLURM step's cgroup), at least 1.

    `os.cpu_count()` counts the host's CPUs: in a container limited to 4 of 64 it reports 64,
    and 64 threads then share 4 CPUs' worth of time.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus or 1, max(1, math.ceil(quota)))
    return max(1, cpus or 1)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None without one.

    cgroup v2: `cpu.max` ("max 100000" or "400000 100000") of the process's own group (from
    /proc/self/cgroup's `0::/path`); cgroup v1: `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1:
    none). Inside a container the group's files are its root's.
    """
    v2, v1 = _own_groups()
    for group in (*v2, "/"):
        limit = cgroup_root / group.lstrip("/") / "cpu.max"
        if limit.is_file():
            quota, _, period = limit.read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
    for hierarchy in ("cpu", "cpu,cpuacct"):
        for group in (*v1, "/"):
            folder = cgroup_root / hierarchy / group.lstrip("/")
            quota_file, period_file = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
            if quota_file.is_file() and period_file.is_file():
                quota_us = int(quota_file.read_text())
                return None if quota_us <= 0 else quota_us / int(period_file.read_text())
    return None


def _own_groups() -> tuple[list[str], list[str]]:
    """This process's cgroup v2 path and its v1 `cpu` controller's path, from /proc (the root,
    "/", is what a container sees of its own)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    fields = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    v2 = [path for _, controllers, path in fields if controllers == ""]
    v1 = [path for _, controllers, path in fields if "cpu" in controllers.split(",")]
    return v2, v1


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
