"""CPU and memory of a server process, found by its pid or by the port it listens on.

CPU is user+system time of every thread of the process and of its child processes
(the voice worker), with the main (event-loop) thread's share and the children's share
apart: what is left went to aiortc's codec threads and the I/O helpers. Python does not
name its threads for the OS, so they cannot be told apart further from outside.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


@dataclass(frozen=True)
class CpuSample:
    total: float  # seconds, all threads, child processes included
    loop: float  # the main (event-loop) thread
    children: float  # live child processes (the voice workers)
    waited: float  # seconds threads were runnable but waiting for a core (all threads)
    memory: int  # bytes: PSS of the process and its children (shared pages once), else RSS
    by_thread: dict[int, float] = field(default_factory=dict, repr=False)  # waited per thread

    def minus(self, earlier: CpuSample) -> CpuSample:
        # Per thread: a thread that ended in between must not make the sum go backwards.
        waited = sum(w - earlier.by_thread.get(tid, 0.0) for tid, w in self.by_thread.items())
        return CpuSample(
            self.total - earlier.total,
            self.loop - earlier.loop,
            max(0.0, self.children - earlier.children),
            waited,
            self.memory,
        )


def pid_listening_on(url: str) -> int | None:
    """The local process listening on the URL's port, if it is on this machine."""
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS and parts.hostname is not None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except psutil.AccessDenied:
        log.warning("not allowed to list sockets: cannot find the server process of %s", url)
    return None


def process_cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU time of every thread of a process (Linux /proc), else None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> CpuSample | None:
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            times = process.cpu_times()
            memory = _memory(process)
            threads = process.threads()
        children = process.children(recursive=True)
    except psutil.Error:
        return None
    child_cpu = 0.0
    for child in children:
        try:
            with child.oneshot():
                t = child.cpu_times()
                child_cpu += t.user + t.system
                memory += _memory(child)
        except psutil.Error:
            continue
    loop = sum(t.user_time + t.system_time for t in threads if t.id == pid)
    total = times.user + times.system + times.children_user + times.children_system + child_cpu
    waited = _waited(pid, [t.id for t in threads])
    return CpuSample(total, loop, child_cpu, sum(waited.values()), memory, waited)


def _memory(process: psutil.Process) -> int:
    """Proportional set size where the OS tells it: the server's voice workers share
    torch's libraries, which their RSS would count once each."""
    try:
        return int(process.memory_full_info().pss)
    except (AttributeError, psutil.AccessDenied):
        return int(process.memory_info().rss)


def _waited(pid: int, threads: list[int]) -> dict[int, float]:
    """Run-queue delay of each thread (/proc/PID/task/TID/schedstat, Linux)."""
    out: dict[int, float] = {}
    for tid in threads:
        try:
            out[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return out
