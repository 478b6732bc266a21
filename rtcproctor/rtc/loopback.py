"""Make 127.0.0.1 an ICE host candidate.

aioice skips loopback when gathering, so an aiortc peer inside a network namespace
that has only `lo` (how tests and benchmarks run) would have no candidate at all.
"""

from __future__ import annotations

import aioice.ice

_PATCHED = "_rtcproctor_loopback"


def allow_loopback_candidates() -> None:
    original = aioice.ice.get_host_addresses
    if getattr(original, _PATCHED, False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    setattr(with_loopback, _PATCHED, True)
    aioice.ice.get_host_addresses = with_loopback
