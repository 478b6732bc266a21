"""Let a process that runs the models reuse freed memory instead of returning it.

glibc serves large allocations (above its adaptive mmap threshold) with fresh mmap()s and
gives them back on free, and it trims the heap's free top as soon as it passes 128 KiB.
A forward pass allocates one tensor of a few MiB per layer, so each layer faulted in
new zeroed pages: a third of the segmentation's time on this machine (26.5 -> 18.6 ms a
window) and a quarter of a single speaker embedding's. With both thresholds raised the
heap keeps and reuses those pages. This is what PyTorch's CPU performance guide gets
by preloading jemalloc or tcmalloc, without changing how the process is started. The
cost: the process keeps its peak heap, which one batch of tensors bounds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt() parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: tensors below it stay in the heap
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no
    glibc (macOS, musl), which leaves the allocator as it was."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    log.debug("allocator: glibc thresholds %s", "raised" if ok else "unchanged")
    return ok
