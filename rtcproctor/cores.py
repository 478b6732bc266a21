"""How many cores this process may really use.

`os.cpu_count()` counts the host's cores. In a container limited with `cpus:` (a CFS
quota) or pinned to some cores (`cpuset`), sizing thread pools by it oversubscribes
the share the container has: torch's threads then wait for each other and for the
event loop, and every window takes longer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process is pinned to, lowered to its cgroup's CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) of this
    process's cgroup and its parents, the tightest one; None if unlimited or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        if controllers == "":  # cgroup v2: one unified hierarchy
            for folder in _up(root, path):
                quotas += _v2(folder / "cpu.max")
        elif "cpu" in controllers.split(","):
            base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
            for folder in _up(base, path):
                quotas += _v1(folder)
    return min(quotas) if quotas else None


def _up(base: Path, path: str) -> list[Path]:
    """`base/path` and each of its parents up to `base` (a limit on any of them holds).
    Inside a container's own cgroup namespace, `path` is "/" and base is its cgroup."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2(file: Path) -> list[float]:
    try:
        quota, period = file.read_text().split()[:2]
        return [] if quota == "max" else [int(quota) / int(period)]
    except (OSError, ValueError):
        return []


def _v1(folder: Path) -> list[float]:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return []
    return [quota / period] if quota > 0 and period > 0 else []
