"""Gather ICE host candidates on 127.0.0.1 only.

The benchmark must stay on loopback even on a machine with other interfaces, so its
aiortc peers offer nothing but 127.0.0.1 (the test network namespaces have only `lo`
anyway; there `loopback.allow_loopback_candidates()` is enough).
"""

from __future__ import annotations

import aioice.ice

_PATCHED = "_rtcproctor_loopback"


def loopback_only() -> None:
    def only_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    # Marked like loopback.py's patch, so a later allow_loopback_candidates() keeps this one.
    setattr(only_loopback, _PATCHED, True)
    aioice.ice.get_host_addresses = only_loopback
