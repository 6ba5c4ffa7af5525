"""CPUs a process may use: affinity capped by a container's CPU quota (cgroup v2 and v1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heartvec.resources import available_cpus, cgroup_cpu_quota

AFFINITY = len(os.sched_getaffinity(0))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2, `docker run --cpus 1.5`
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        (
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            3.0,
        ),
        ({}, None),  # no cgroup file system
    ],
)
def test_cpu_quota_is_read_from_cgroup_v2_and_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    for name, text in files.items():
        _write(tmp_path / name, text)
    assert cgroup_cpu_quota(tmp_path) == quota
    expected = AFFINITY if quota is None else min(AFFINITY, max(1, -(-quota // 1)))
    assert available_cpus(tmp_path) == expected


def test_a_quota_below_the_affinity_caps_the_cpus(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "100000 100000\n")  # one CPU's time
    assert available_cpus(tmp_path) == 1
    _write(tmp_path / "cpu.max", f"{(AFFINITY + 8) * 100000} 100000\n")  # more than the host
    assert available_cpus(tmp_path) == AFFINITY
